"""Ctrl-C under `clipav2 train`: the first SIGINT says what it will do, finishes the step, writes
a checkpoint and exits 130 (the run resumes from it); a second one aborts at once."""
import os
import signal
import subprocess
import sys
import time

import pytest

from test_checkpoint_attacks import _env
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def _start(tmp_path, tmp_path_factory):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", small_demo(tmp_path_factory), run,
                         **{"stages.pretrain.samples": 3200, "checkpoint.every_steps": 2, "eval.at_stage_end": False,
                            "data.workers": 1})
    cmd = [sys.executable, "-m", "clipav2", "train", str(recipe), "--stage", "pretrain"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    first = run / "checkpoints" / "pretrain" / "step_00000002" / "manifest.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    return proc, run


def test_ctrl_c_checkpoints_and_says_so(tmp_path_factory, tmp_path):
    proc, run = _start(tmp_path, tmp_path_factory)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole group, data worker included
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "SIGINT: finishing this step, writing a checkpoint" in err and "Ctrl-C again aborts at once" in err
    line = next(x for x in out.splitlines() if "interrupted by SIGINT" in x)
    step = int(line.split("after step ")[1].split(";")[0])
    assert "checkpoint written, exit 130" in line
    assert (run / "checkpoints" / "pretrain" / f"step_{step:08d}" / "manifest.json").is_file()
    assert "Traceback" not in err


def test_a_second_ctrl_c_aborts_at_once(tmp_path_factory, tmp_path):
    proc, run = _start(tmp_path, tmp_path_factory)
    os.kill(proc.pid, signal.SIGINT)
    seen = []
    for line in proc.stderr:  # the second only once the first was handled (signals do not queue)
        seen.append(line)
        if line.startswith("SIGINT: finishing this step"):
            os.kill(proc.pid, signal.SIGINT)
            break
    out, err = proc.communicate(timeout=300)
    err = "".join(seen) + err
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: aborted at once" in err and "checkpoint written" not in out, out[-2000:] + err[-3000:]


def test_the_second_sigint_raises_in_the_handler(monkeypatch):
    from clipav2 import signals

    monkeypatch.setattr(signals, "_interrupts", 0)
    monkeypatch.setattr(signals, "_received", None)
    signals._on_signal(signal.SIGINT, None)
    assert signals.signal_received() == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        signals._on_signal(signal.SIGINT, None)
