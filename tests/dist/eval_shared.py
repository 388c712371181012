"""Zero-shot of the live model split over the ranks (PeriodicEval.run), for each engine named on
the command line, beside rank 0 evaluating the same initial weights alone. Launched under
`torchrun --nproc_per_node 2`; writes OUT/results.json on rank 0:
{strategy: {"shared": {...}, "alone": {...}, "rng_kept": bool, "training_mode": bool}}.

    driver: eval_shared.py RECIPE OUT STRATEGY [STRATEGY ...] [--set key=value ...]
"""
import json
import sys
from pathlib import Path

import torch

from clipav2.config import load_config
from clipav2.eval.periodic import PeriodicEval
from clipav2.eval.run import evaluate
from clipav2.parallel import init_distributed
from clipav2.stage import resolve
from clipav2.train.stages import build_stage_model
from clipav2.train.step import TrainStep


def main(argv):
    recipe, out, *rest = argv
    strategies = [a for a in rest if "=" not in a]
    overrides = [a for a in rest if "=" in a]
    results = {}
    world = None
    for name in strategies:
        cfg = load_config(recipe, [f"parallel.strategy={name}", *overrides])
        world = world or init_distributed(cfg.parallel)
        cfg.validate(world.world_size)
        stage = resolve(cfg, 0, world.world_size)
        strategy = TrainStep(cfg, stage, world, build_stage_model(cfg, 0, cfg.run_dir))
        before = torch.get_rng_state()
        shared = PeriodicEval(cfg, stage, world).run(strategy.engine)
        entry = {"shared": shared, "rng_kept": bool(torch.equal(before, torch.get_rng_state())),
                 "training_mode": bool(strategy.engine.model.training)}
        if world.is_main:  # the same initial weights (seeded), one process, the whole set
            entry["alone"] = evaluate(build_stage_model(cfg, 0, cfg.run_dir), cfg, stage, world.device)
            results[name] = entry
        del strategy
    if world.is_main:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
