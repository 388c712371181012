"""The demo recipe, shortened to four steps per stage, under each engine on 2 CPU ranks
(torchrun, gloo, OMP_NUM_THREADS=1), through the real command line: both stage files, every
metric key, the evaluation records, output free of library warnings. Fine-tuning uses 2 micro-steps per rank (accumulation)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from clipav2.train.metrics import METRIC_KEYS
from support import ENV, free_port, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def torchrun(recipe: Path, *overrides, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", **{k: os.environ.get(k, v) for k, v in ENV.items()})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
           "-m", "clipav2", "train", str(recipe), *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "strategy, extra",
    # ZeRO-3 stands for the DeepSpeed stages (tests/test_parallel.py compares ZeRO 1, 2 and 3 with single step by step)
    [("ddp", []), ("fsdp", []), ("deepspeed", ["parallel.zero_stage=3"])],
    ids=["ddp", "fsdp", "zero3"],
)
def test_demo_under_strategy(tmp_path, demo_data, strategy, extra):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", demo_data, run, **{"stages.finetune.micro_batch": 4})
    proc = torchrun(recipe, f"parallel.strategy={strategy}", "parallel.micro_batch=8", *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage, size in (("pretrain", 16), ("finetune", 32)):
        with safe_open(str(run / f"{stage}.safetensors"), "pt") as f:
            meta = json.loads(f.metadata()["clipav2.options"])
            assert meta["image_size"] == size
            assert f.get_tensor("logit_scale").dtype.is_floating_point
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in records] == [("pretrain", 2), ("pretrain", 4), ("finetune", 2), ("finetune", 4)]
    for r in records:
        assert set(METRIC_KEYS) <= set(r)
        assert r["samples_per_s_per_gpu"] == pytest.approx(r["samples_per_s"] / 2)
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["pretrain", "finetune"] and all(e["n"] == 144 for e in evals)
    assert "zero-shot top-1" in proc.stdout and "cost:" in proc.stdout
    assert "Warning" not in proc.stdout + proc.stderr, proc.stderr[-3000:]  # no DCP / all_gather deprecation noise
