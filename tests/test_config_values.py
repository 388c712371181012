"""Every float setting must be a finite number (found by walking the config's dataclasses, so a
new float field is covered too), and a key given twice in a YAML mapping is an error."""
import dataclasses
import typing

import pytest

from clipav2 import config as C

BASE = ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=4"]


def _float_keys(cls, prefix=""):
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is typing.Union else []
        tp = args[0] if args else tp
        key = f"{prefix}{f.name}"
        if tp is float:
            yield key, None
        elif typing.get_origin(tp) is tuple and float in typing.get_args(tp):
            yield key, len(typing.get_args(tp))
        elif dataclasses.is_dataclass(tp):
            yield from _float_keys(tp, key + ".")


KEYS = list(_float_keys(C.Config)) + [(f"stages.s.{k}", n) for k, n in _float_keys(C.StageConfig)]


def test_the_walk_finds_the_float_settings():
    names = {k for k, _ in KEYS}
    assert {"stages.s.lr_base", "checkpoint.every_minutes", "parallel.timeout_minutes", "stages.s.augment.crop_scale"} <= names


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
@pytest.mark.parametrize("key,length", KEYS)
def test_non_finite_floats_are_refused(key, length, value):
    item = f"{key}={value}" if length is None else f"{key}=[{', '.join([value] * length)}]"
    with pytest.raises(C.ConfigError, match=f"^{key.replace('.', '[.]')}(\\[0\\])?: .* is not a finite number$"):
        C.load_config(None, BASE + [item])


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model:\n  name: tiny\nstages:\n  - name: s\n    samples: 64\n    global_batch: 4\n    samples: 128\n")
    with pytest.raises(C.ConfigError, match="duplicate key 'samples' \\(line 7\\)"):
        C.load_config(path)
    path.write_text("seed: 1\nseed: 2\nstages: [{name: s, samples: 64, global_batch: 4}]\n")
    with pytest.raises(C.ConfigError, match="duplicate key 'seed'"):
        C.load_config(path)
