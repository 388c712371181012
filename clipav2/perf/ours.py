"""Our training step, built as `clipav2 train` builds it: the stage's fresh model
(`train.stages.fresh_model`), `parallel.build_strategy` (which checkpoints, compiles and shards it
as the config says), and the loop's own `train.step.StepRunner` (uint8 normalised on the device,
the stage's kept-token count, the global-batch loss). No separate benchmark model."""
from __future__ import annotations

import itertools


def our_step(cfg, stage, world):
    """Build model + strategy for a resolved `stage`; return `step(micro_batches) -> StepResult`."""
    from clipav2.parallel import build_strategy
    from clipav2.train.stages import fresh_model
    from clipav2.train.step import StepRunner

    strategy = build_strategy(cfg, world)
    strategy.setup(fresh_model(cfg, stage), stage)
    runner = StepRunner(strategy, cfg.seed)
    counter = itertools.count()

    def step(micro_batches):
        return runner.run(micro_batches, next(counter))

    step.strategy = strategy
    return step
