"""The full loop killed with SIGKILL in the middle of the fine-tune stage and started again ends
with the same weights as an uninterrupted run, having trained on exactly the same samples at
every step (nothing repeated, nothing skipped). The engine tests (test_parallel) resume each
strategy with data in a global order; this one covers the real loader and the rest of the loop:
stage files, data position, kept-patch seeds, the RNG, the ledger, zero-shot evaluations during
the stage."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file

from support import ENV, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def _cmd(recipe, run):
    return [sys.executable, "-m", "clipav2", "train", str(recipe), f"run_dir={run}"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", **{k: os.environ.get(k, v) for k, v in ENV.items()})


def _steps(run) -> dict:
    """(stage, step) -> the sample keys of that step; a redone step's last line wins."""
    seen = {}
    for line in (run / "samples" / "rank_0.txt").read_text().splitlines():
        stage, step, keys = line.split(" ")
        seen[(stage, int(step))] = keys.split(",")
    return seen


def test_sigkill_mid_stage_then_resume(tmp_path, demo_data):
    recipe = tiny_recipe(
        tmp_path / "r.yaml", demo_data, tmp_path / "unused",
        **{"stages.finetune.samples": 320, "checkpoint.every_steps": 4, "log.sample_keys": True,
           "eval.at_stage_end": False, "eval.every_samples": 96, "data.workers": 1},
    )
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    done = subprocess.run(_cmd(recipe, ref), env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_cmd(recipe, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = cut / "checkpoints" / "finetune" / "step_00000004" / "manifest.json"
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (cut / "finetune.safetensors").exists(), "the kill did not land mid-stage"

    again = subprocess.run(_cmd(recipe, cut), env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout and "resuming at step" in again.stdout

    a, b = load_file(str(ref / "finetune.safetensors")), load_file(str(cut / "finetune.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    assert _steps(ref) == _steps(cut)
    steps = _steps(cut)
    assert len(steps) == 4 + 20
    # the ledger continued from the checkpoint: progress is the finished stage's, and the time of
    # both attempts is in it (the first attempt's pre-training at least)
    ledger = json.loads((cut / "ledger.json").read_text())
    assert ledger["stages"]["finetune"]["steps"] == 20 and ledger["stages"]["pretrain"]["steps"] == 4
    assert ledger["stages"]["pretrain"]["gpu_seconds"]["train"] > 0
    # zero-shot every 96 recipe samples (the 64 of pre-training, then the fine-tune's): it left the
    # training as it was (the weights above), and after the restart the same evaluations agree
    def evals(run):
        return {(e["stage"], e["step"]): (e["top1"], e["top5"]) for e in map(json.loads, (run / "eval.jsonl").read_text().splitlines())}

    assert sorted(evals(ref)) == [("finetune", 2), ("finetune", 8), ("finetune", 14), ("finetune", 20)]
    assert evals(cut) == evals(ref)
