"""Atomic checkpoints (one process, `single` strategy, tiny model): manifest written last, keep K,
corrupt / truncated / manifest-less / malicious newest -> fall back to the previous one."""
import json
import pickle

import pytest
import torch

import clipav2
from clipav2.config import load_config
from clipav2.parallel.env import World
from clipav2.train import checkpoint as ck
from clipav2.stage import resolve
from clipav2.train.step import TrainStep


@pytest.fixture
def strategy():
    cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=4", "parallel.micro_batch=4", "parallel.precision=fp32"])
    torch.manual_seed(0)
    return TrainStep(cfg, resolve(cfg, 0, 1), World(), clipav2.create_model("tiny"))


def _train_step(s):
    x, t = torch.randn(4, 3, 32, 32), torch.randint(0, 32000, (4, 16))
    return s([(x, t, None)])[0]


def _weights(s):
    return {k: v.clone() for k, v in s.engine.module.state_dict().items()}


def test_save_keep_and_resume_newest(tmp_path, strategy):
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=2)
    saved = {}
    for step in (1, 2, 3):
        _train_step(strategy)
        mgr.save(strategy, step, {"step": step})
        saved[step] = _weights(strategy)
    assert [p.name for p in mgr.complete()] == ["step_00000003", "step_00000002"]
    assert json.loads((tmp_path / "step_00000003" / "manifest.json").read_text())["files"]
    (tmp_path / "step_00000004.tmp").mkdir()  # a crash mid-save leaves this: ignored
    _train_step(strategy)
    assert mgr.resume(strategy) == {"step": 3}
    assert strategy.count == 3
    for k, v in saved[3].items():
        assert torch.equal(strategy.engine.module.state_dict()[k], v), k


def _two_checkpoints(tmp_path, strategy):
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=3)
    _train_step(strategy)
    mgr.save(strategy, 1, {"step": 1})
    good = _weights(strategy)
    _train_step(strategy)
    newest = mgr.save(strategy, 2, {"step": 2})
    _train_step(strategy)
    return mgr, newest, good


def _biggest_file(d):
    return max((p for p in d.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "no_manifest", "bad_manifest"])
def test_damaged_newest_falls_back_to_previous(tmp_path, strategy, damage):
    mgr, newest, good = _two_checkpoints(tmp_path, strategy)
    f = _biggest_file(newest)
    if damage == "corrupt":
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-100])
    elif damage == "no_manifest":
        (newest / "manifest.json").unlink()
    else:
        (newest / "manifest.json").write_text("{not json")
    if damage == "no_manifest":  # simply incomplete: not a candidate, no warning needed
        assert mgr.resume(strategy) == {"step": 1}
    else:
        with pytest.warns(UserWarning, match="falling back to step_00000001"):
            assert mgr.resume(strategy) == {"step": 1}
    for k, v in good.items():
        assert torch.equal(strategy.engine.module.state_dict()[k], v), k


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, strategy, capsys):
    mgr, newest, good = _two_checkpoints(tmp_path, strategy)
    meta = newest / "state" / ".metadata"
    meta.write_bytes(pickle.dumps(_Evil()))
    manifest = json.loads((newest / "manifest.json").read_text())  # make it pass the CRC check
    manifest["files"]["state/.metadata"] = [meta.stat().st_size, ck._crc32(meta)]
    (newest / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="failed to load"):
        assert mgr.resume(strategy) == {"step": 1}
    assert "pwned" not in capsys.readouterr().out


def test_due_by_steps_and_by_minutes(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, every_steps=5, every_minutes=1e9, keep=1)
    assert [s for s in range(1, 12) if mgr.due(s)] == [5, 10]
    mgr = ck.CheckpointManager(tmp_path, every_steps=10**6, every_minutes=1e-9, keep=1)
    assert mgr.due(1)

