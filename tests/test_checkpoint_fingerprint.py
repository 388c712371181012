"""Each checkpoint records what it was made for; pruning never counts (or deletes) checkpoints
of another fingerprint, and those are an error naming what differs. A checkpoint directory
without a manifest is reported when skipped."""
import pytest

from clipav2.train import checkpoint as ck
from test_checkpoint import _train_step, strategy  # noqa: F401  (the fixture)


def _fp(strategy, text_len):
    stage = type("S", (), {"name": "s", "image_size": 32, "text_len": text_len})()
    return ck.fingerprint("tiny", stage, strategy.engine.module)


def test_pruning_keeps_another_fingerprints_checkpoints(tmp_path, strategy):  # noqa: F811
    other = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=5)
    other.fingerprint = {**_fp(strategy, 16), "model": "tiny_other"}
    for step in (10, 20):
        _train_step(strategy)
        other.save(strategy, step, {"step": step})
    mine = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=2)
    mine.fingerprint = _fp(strategy, 16)
    for step in (1, 2, 3):
        _train_step(strategy)
        mine.save(strategy, step, {"step": step})
    assert [p.name for p in mine.complete()] == ["step_00000020", "step_00000010", "step_00000003", "step_00000002"]
    with pytest.raises(ck.IncompatibleCheckpoint, match="model 'tiny_other' \\(this run: 'tiny'\\)") as e:
        mine.check_fingerprints()
    assert "step_00000020" in str(e.value) and "\n" not in str(e.value)


def test_a_shape_difference_is_named(tmp_path, strategy):  # noqa: F811
    saved = _fp(strategy, 16)
    ours = _fp(strategy, 16)
    key = next(iter(ours["shapes"]))
    ours["shapes"][key] = [7, 7]
    (diff,) = ck.fingerprint_differences(saved, ours)
    assert f"{key} {saved['shapes'][key]} (this run: [7, 7])" in diff


def test_a_checkpoint_without_manifest_is_reported(tmp_path, strategy):  # noqa: F811
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=3)
    _train_step(strategy)
    mgr.save(strategy, 1, {"step": 1})
    (tmp_path / "step_00000002").mkdir()  # e.g. copied by hand without its manifest
    with pytest.warns(ck.CheckpointWarning, match="step_00000002 has no manifest.json .*skipped"):
        assert [p.name for p in mgr.complete()] == ["step_00000001"]
