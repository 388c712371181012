import pytest

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
