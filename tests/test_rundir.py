"""What a run directory keeps between attempts: a changed recipe is refused listing the keys
(safe-by-nature changes are listed and taken), --fresh moves the old state aside, stale .tmp
checkpoints are removed, and checkpoints of another model are an error naming what differs."""
import shutil

import pytest

from clipav2.train.rundir import differences, is_safe
from test_checkpoint_attacks import _train, train_pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_pretrain(tmp_path_factory, "rundir", 64)


def _copy(good, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(good, run)
    return run


def test_a_changed_recipe_is_refused_listing_the_keys(tmp_path, trained):
    recipe, good = trained
    run = _copy(good, tmp_path)
    (run / "pretrain.safetensors").unlink()  # mid-stage
    before = (run / "config.yaml").read_text()
    r = _train(recipe, run, "stages.pretrain.lr_base=0.002", "stages.pretrain.global_batch=32")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "stages.pretrain.lr_base 0.004 -> 0.002" in lines[0] and "stages.pretrain.global_batch 16 -> 32" in lines[0]
    assert "--fresh" in lines[0]
    assert (run / "config.yaml").read_text() == before  # the run's config is kept


def test_safe_changes_are_listed_and_stale_tmp_removed(tmp_path, trained):
    recipe, good = trained
    run = _copy(good, tmp_path)
    stale = run / "checkpoints" / "pretrain" / "step_00000099.tmp"
    stale.mkdir()
    r = _train(recipe, run, "data.workers=1", "log.every_steps=3", "checkpoint.keep=5")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "safe to change: checkpoint.keep, data.workers, log.every_steps" in r.stdout
    assert f"removed the half-written checkpoint {stale}" in r.stdout and not stale.exists()
    assert "every_steps: 3" in (run / "config.yaml").read_text()


def test_fresh_moves_the_old_state_aside(tmp_path, trained):
    recipe, good = trained
    run = _copy(good, tmp_path)
    old_weights = (run / "pretrain.safetensors").read_bytes()
    r = _train(recipe, run, "stages.pretrain.lr_base=0.002", fresh=True)
    assert r.returncode == 0, r.stderr[-3000:]
    (previous,) = (run / "previous").iterdir()
    assert (previous / "pretrain.safetensors").read_bytes() == old_weights
    assert (previous / "checkpoints" / "pretrain" / "step_00000002" / "manifest.json").is_file()
    assert "0.002" in (run / "config.yaml").read_text() and (run / "pretrain.safetensors").is_file()
    assert "resuming at step" not in r.stdout


def test_checkpoints_of_another_model_are_an_error_naming_the_difference(tmp_path, trained):
    recipe, good = trained
    run = _copy(good, tmp_path)
    (run / "pretrain.safetensors").unlink()
    (run / "config.yaml").unlink()  # a run dir from before config.yaml was kept: the fingerprint decides
    r = _train(recipe, run, "stages.pretrain.text_len=16")
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if "clipav2 train:" in line]
    assert len(lines) == 1 and "text_len 8 (this run: 16)" in lines[0] and "tensor shape" in lines[0], r.stderr
    assert sorted(p.name for p in (run / "checkpoints" / "pretrain").iterdir()) == ["step_00000002"]
    assert "Traceback" not in r.stderr


def test_differences_address_stages_by_name():
    old = {"seed": 0, "stages": [{"name": "a", "samples": 1}, {"name": "b", "samples": 2}], "log": {"every_steps": 1}}
    new = {"seed": 0, "stages": [{"name": "a", "samples": 3}], "log": {"every_steps": 2}}
    assert differences(old, new) == ["log.every_steps", "stages.a.samples", "stages.b.position", "stages.b.samples"]
    assert is_safe("log.every_steps") and is_safe("stages.a.micro_batch") and is_safe("data.train")
    assert not is_safe("stages.a.samples") and not is_safe("data.shuffle_buffer") and not is_safe("seed")
    # a key the config gained after the run started: absent from its config.yaml, the default then
    assert differences({"seed": 0, "stages": [{"name": "a"}]},
                       {"seed": 0, "model": {"gelu": "tanh"}, "stages": [{"name": "a", "eps": 1e-8}]}) == []
    assert differences({"seed": 0}, {"seed": 0, "model": {"gelu": "exact"}}) == ["model.gelu"]
