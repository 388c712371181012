"""A full disk during a checkpoint save: one line naming the path and the checkpoint kept, the
half-written directory removed, and the run resumes from the kept one once there is space. The
run directory is a real 20 MB tmpfs (a private mount namespace), so ENOSPC comes from the kernel."""
import shutil
import subprocess
import sys

import pytest

from test_checkpoint_attacks import _env
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def _can_mount(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    (tmp_path / "probe").mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {tmp_path / 'probe'}"],
                       capture_output=True)
    return r.returncode == 0


def test_disk_full_during_a_save(tmp_path_factory, tmp_path):
    if not _can_mount(tmp_path):
        pytest.skip("needs `unshare -rm` and tmpfs mounts (a private mount namespace) to fill a real disk")
    data = small_demo(tmp_path_factory)
    run = tmp_path / "run"
    run.mkdir()
    recipe = tiny_recipe(tmp_path / "r.yaml", data, run,
                         **{"stages.pretrain.samples": 96, "checkpoint.every_steps": 2, "eval.at_stage_end": False})
    train = f"{sys.executable} -m clipav2 train {recipe} --stage pretrain"
    # a checkpoint of this model is ~13 MB: the one at step 2 fits in 20 MB, the one at step 4 does not
    script = f"""
mount -t tmpfs -o size=20m tmpfs {run}
{train} > {tmp_path}/out1 2> {tmp_path}/err1; echo $? > {tmp_path}/rc1
ls {run}/checkpoints/pretrain > {tmp_path}/ls1
mount -o remount,size=200m {run}
{train} > {tmp_path}/out2 2> {tmp_path}/err2; echo $? > {tmp_path}/rc2
ls {run} > {tmp_path}/ls2
"""
    subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), timeout=900, check=True)
    read = lambda name: (tmp_path / name).read_text()  # noqa: E731
    assert read("rc1").strip() == "74", read("err1")[-3000:]
    assert "Traceback" not in read("err1"), read("err1")[-3000:]
    (line,) = [x for x in read("err1").splitlines() if x.startswith("clipav2 train:")]
    assert line.startswith("clipav2 train: no space left on device writing ")
    assert "step_00000004" in line and line.endswith("previous checkpoint " + str(run / "checkpoints/pretrain/step_00000002") + " kept")
    assert read("ls1").split() == ["step_00000002"]  # the half-written step_00000004.tmp is gone
    assert read("rc2").strip() == "0", read("err2")[-3000:]
    assert "resuming at step 2" in read("out2") and "pretrain.safetensors" in read("ls2").split()
