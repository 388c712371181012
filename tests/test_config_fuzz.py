"""Property-based fuzzing of what a user types and writes: whatever the command-line override or
the recipe file holds, `load_config` returns a Config or raises ConfigError (one line naming the
problem) and nothing else — no traceback reaches `clipav2 train`, whatever nobody thought to list."""
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipav2.config import ConfigError, load_config

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = ["seed", "run_dir", "model.name", "data.workers", "data.prefetch", "parallel.micro_batch",
        "parallel.strategy", "stages.pretrain.samples", "stages.pretrain.image_size", "stages.finetune.text_len",
        "stages.pretrain.augment.crop_scale", "cost.gpu", "log.wandb", "eval.every_samples"]
# YAML-ish fragments a value might be made of: flow collections, anchors, tags, documents, numbers
PIECES = st.sampled_from(["[", "]", "{", "}", ":", ": ", ",", "&a ", "*a", "!!python/object/apply:os.system ", "!!int ",
                          "!!binary ", "---", "...", "\n", "#", "'", '"', "|", ">", "-", "?", "%YAML 1.1", "1e400",
                          "0x", "9" * 30, "null", "~", "true", ".nan", "-.inf", "\t", "\x00", "\ufeff", "\udcff"])
VALUES = st.one_of(st.text(max_size=40), st.lists(st.one_of(PIECES, st.text(max_size=5)), max_size=12).map("".join))


def _one_line_or_config(recipe, overrides=()):
    try:
        load_config(recipe, list(overrides))
    except ConfigError as e:
        assert str(e) and "\n" not in str(e).strip(), repr(str(e))


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=VALUES)
def test_any_override_is_a_config_or_one_config_error(key, value):
    _one_line_or_config(RECIPE, [f"{key}={value}"])


@FUZZ
@given(item=st.text(max_size=60))
def test_any_override_text_is_a_config_or_one_config_error(item):
    _one_line_or_config(RECIPE, [item])


@pytest.fixture
def recipe_file(tmp_path):
    return tmp_path / "r.yaml"


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_recipe_bytes_are_a_config_or_one_config_error(recipe_file, data):
    recipe_file.write_bytes(data)
    _one_line_or_config(recipe_file)


YAML_DATA = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)


@FUZZ
@given(section=st.sampled_from(["seed", "model", "data", "parallel", "stages", "eval", "cost", "log", "base",
                                "stage_defaults", "checkpoint", "faults"]), value=YAML_DATA)
def test_any_recipe_value_is_a_config_or_one_config_error(recipe_file, section, value):
    """The demo recipe with one top-level section replaced by arbitrary YAML data."""
    raw = yaml.safe_load(RECIPE.read_text())
    raw[section] = value
    recipe_file.write_text(yaml.safe_dump(raw, allow_unicode=True))
    _one_line_or_config(recipe_file)


@FUZZ
@given(pieces=st.lists(st.one_of(PIECES, st.text(max_size=6)), max_size=30))
def test_recipe_text_after_a_valid_one_is_a_config_or_one_config_error(recipe_file, pieces):
    recipe_file.write_text(RECIPE.read_text() + "".join(pieces), errors="surrogatepass")
    _one_line_or_config(recipe_file)
