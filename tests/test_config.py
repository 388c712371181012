import pytest

import clipav2
from clipav2.config import ConfigError, load_config


def _recipe(tmp_path, text="model: {name: tiny}\nstages:\n  - {name: pretrain, image_size: 32, samples: 1000, global_batch: 100, lr_base: 8e-6}\n"):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_overrides_address_stages_by_name(tmp_path):
    cfg = load_config(_recipe(tmp_path), ["stages.pretrain.samples=4096", "parallel.strategy=fsdp"])
    assert cfg.stage("pretrain").samples == 4096
    assert cfg.stage("pretrain").lr_base == 8e-6  # YAML's "8e-6" (no dot) is read as a number
    assert cfg.parallel.strategy == "fsdp"


@pytest.mark.parametrize(
    "override, key",
    [
        ("parallel.strategy=foo", "parallel.strategy"),
        ("parallel.zero_stage=4", "parallel.zero_stage"),
        ("stages.pretrain.image_size=33", "stages.pretrain.image_size"),
        ("model.foo=1", "model.foo"),
    ],
)
def test_errors_name_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(_recipe(tmp_path), [override])


# ---------------------------------------------------------------- against the launcher's world
def _cfg(*overrides):
    return load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=16", "parallel.micro_batch=4", *overrides])


@pytest.mark.parametrize(
    "overrides,world,key",
    [
        (["parallel.strategy=megatron"], 2, "parallel.strategy"),
        (["parallel.strategy=deepspeed", "parallel.zero_stage=4"], 2, "parallel.zero_stage"),
        (["parallel.strategy=ddp"], 3, "stages.s.global_batch"),
        (["parallel.strategy=ddp", "parallel.grad_accum=3"], 2, "stages.s.global_batch"),
        (["parallel.strategy=single"], 2, "parallel.strategy"),
        (["parallel.strategy=fsdp", "parallel.hsdp_shard_size=3"], 4, "parallel.hsdp_shard_size"),
    ],
)
def test_bad_configuration_fails_before_a_model_exists(overrides, world, key, monkeypatch):
    built = []
    monkeypatch.setattr(clipav2, "create_model", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=16", "parallel.micro_batch=4", *overrides])
        cfg.validate(world)  # what the loop checks once the launcher's world is known
    assert not built


def test_good_configuration_passes():
    _cfg("parallel.strategy=ddp").validate(2)
