"""Zero-shot evaluation split over 2 CPU ranks (torchrun, gloo) through each engine's own forward
(DDP, FSDP2, DeepSpeed ZeRO-3, the last two gathering parameters collectively in every forward)
counts exactly what one process counts on the whole set. Two layouts: more shards than ranks
(split by shard, the ranks' batch counts differ, so the lock-step placeholder forwards run) and a
single shard (split record by record)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support import ENV, free_port, small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run

DRIVER = Path(__file__).parent / "dist" / "eval_shared.py"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from clipav2.data.demo import write_demo

    many = tmp_path_factory.mktemp("many")
    write_demo(many, seed=3, n_train=8, n_eval=150, shard_size=40)  # eval: 40+40+40+30 in 4 shards
    return {"many_shards": many / "eval", "one_shard": small_demo(tmp_path_factory) / "eval"}


@pytest.mark.parametrize("layout, batch", [("many_shards", 25), ("one_shard", 32)])
def test_shared_eval_counts_what_one_process_counts(tmp_path, sets, layout, batch):
    data = sets[layout].parent
    recipe = tiny_recipe(tmp_path / "r.yaml", data, tmp_path / "run", **{"eval.batch_size": batch, "eval.every_samples": 16})
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONPATH=os.pathsep.join(sys.path),
               **{k: os.environ.get(k, v) for k, v in ENV.items()})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           str(DRIVER), str(recipe), str(tmp_path / "out"), "ddp", "fsdp", "deepspeed", "parallel.zero_stage=3",
           "parallel.micro_batch=8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"ddp", "fsdp", "deepspeed"}
    for name, r in results.items():
        shared, alone = r["shared"]["zero_shot"], r["alone"]["zero_shot"]
        assert shared["n"] == alone["n"] == (150 if layout == "many_shards" else 144), name
        assert round(shared["top1"] * shared["n"]) == round(alone["top1"] * alone["n"]), name
        assert round(shared["top5"] * shared["n"]) == round(alone["top5"] * alone["n"]), name
        assert r["rng_kept"] and r["training_mode"], name


def test_stage_end_evaluation_is_shared_and_counts_what_one_process_counts(tmp_path, sets, capsys):
    """`clipav2 train` on 2 FSDP ranks: the stage-end evaluation (zero-shot and retrieval, split
    over the ranks through the engine's forward) gives the figures `clipav2 eval` gets in one
    process from the stage's weights file."""
    from clipav2.cli import main

    data, run = sets["many_shards"].parent, tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", data, run, **{"eval.batch_size": 25, "data.retrieval": str(sets["many_shards"])})
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path),
               **{k: os.environ.get(k, v) for k, v in ENV.items()})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "clipav2", "train", str(recipe), "--stage", "pretrain", "parallel.strategy=fsdp", "parallel.micro_batch=8"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shared = next(json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines() if '"stage_end"' in line)
    assert main(["eval", str(recipe), "--checkpoint", str(run / "pretrain.safetensors"), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for part in ("zero_shot", "retrieval"):
        a, b = shared[part], alone[part]
        assert a["n"] == b["n"] == 150 and a["skipped"] == b["skipped"] == 0, (a, b)
        assert (a["ranks"], b["ranks"]) == (2, 1)  # split over the two ranks, against one process
        for key in (k for k in b if k.startswith(("top", "image_to_text", "text_to_image"))):
            assert round(a[key] * a["n"]) == round(b[key] * b["n"]), (part, key, a, b)
