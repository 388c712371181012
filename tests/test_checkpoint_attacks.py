"""Tampered checkpoints never run code: both known attacks on a DCP checkpoint, end to end through
`clipav2 train` resuming it. The attacker can write the checkpoint directory, so the manifest's
CRCs are rewritten to match; the newest checkpoint must be refused with one line, the previous
good one used, and the payload (a command creating a marker file) must never run."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zlib

import pytest
import torch

from support import ENV, small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def train_pretrain(tmp_path_factory, name: str, samples: int):
    """A finished tiny `pretrain` stage with checkpoints every 2 steps -> (recipe, run dir)."""
    root = tmp_path_factory.mktemp(name)
    data = small_demo(tmp_path_factory)
    recipe = tiny_recipe(root / "r.yaml", data, root / "run",
                         **{"stages.pretrain.samples": samples, "checkpoint.every_steps": 2, "eval.at_stage_end": False})
    done = _train(recipe, root / "run")
    assert done.returncode == 0, done.stderr[-3000:]
    return recipe, root / "run"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished `pretrain` stage (6 steps, checkpoints at 2 and 4), copied per test."""
    return train_pretrain(tmp_path_factory, "attack", 96)


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", **{k: os.environ.get(k, v) for k, v in ENV.items()})


def _train(recipe, run, *overrides, fresh=False):
    cmd = [sys.executable, "-m", "clipav2", "train", str(recipe), f"run_dir={run}", *overrides, "--stage", "pretrain"]
    cmd += ["--fresh"] if fresh else []
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _crc32(path) -> int:
    return zlib.crc32(path.read_bytes())


def _fix_manifest(ckpt):
    """What an attacker with write access does: make every file match the manifest again."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for name in manifest["files"]:
        p = ckpt / name
        manifest["files"][name] = [p.stat().st_size, _crc32(p)]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _dotted_global_pickle(command: str) -> bytes:
    """Protocol 4 resolves a dotted name attribute by attribute: this pair, whose module is
    DCP's own, yields os.system (the filesystem module imports os)."""
    def s(text):
        b = text.encode()
        return b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE
    return (b"\x80\x04" + s("torch.distributed.checkpoint.filesystem") + s("os.system") + b"\x93"  # STACK_GLOBAL
            + s(command) + b"\x85" + b"R" + b".")  # TUPLE1, REDUCE, STOP


class _Payload:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _evil_byte_item(state, command: str) -> None:
    """Point the optimizer's `lr` item at a pickled object appended to the shard file."""
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(state)).read_metadata()  # trusted here: our own test file
    buf = io.BytesIO()
    torch.save(_Payload(command), buf)
    key = next(k for k in metadata.storage_data if k.fqn == "optim.param_groups.0.lr")
    info = metadata.storage_data[key]
    shard = state / info.relative_path
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(buf.getvalue())
    info.offset, info.length = offset, len(buf.getvalue())
    (state / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize("attack", ["dotted_global_in_metadata", "pickled_object_as_byte_item"])
def test_tampered_checkpoint_is_refused_and_the_previous_one_used(tmp_path, trained, attack):
    recipe, good = trained
    run = tmp_path / "run"
    shutil.copytree(good, run)
    (run / "pretrain.safetensors").unlink()  # the stage is not done: train resumes it
    newest = run / "checkpoints" / "pretrain" / "step_00000004"
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    if attack == "dotted_global_in_metadata":
        (newest / "state" / ".metadata").write_bytes(_dotted_global_pickle(command))
    else:
        _evil_byte_item(newest / "state", command)
    _fix_manifest(newest)

    again = _train(recipe, run)
    assert not marker.exists(), "the checkpoint ran a command"
    assert again.returncode == 0, again.stderr[-3000:]
    refusals = [line for line in again.stderr.splitlines() if "step_00000004 is unusable" in line]
    assert len(refusals) == 1, again.stderr[-3000:]
    assert "falling back to step_00000002" in refusals[0]
    why = "os.system" if attack == "dotted_global_in_metadata" else "optim.param_groups.0.lr is not plain data"
    assert why in refusals[0], refusals[0]
    assert "Traceback" not in again.stderr
    assert "resuming at step 2" in again.stdout
    assert (run / "pretrain.safetensors").is_file()
