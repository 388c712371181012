"""Recipes that inherit: `base:` merges a recipe over another, stages by name; `stage_defaults:`
sits under every stage; `clipav2 plan --resolved` prints the flattened result."""
from pathlib import Path

import pytest
import yaml

from clipav2.cli import main
from clipav2.config import ConfigError, load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE = "{name: pretrain, image_size: 32, samples: 1000, global_batch: 100, lr_base: 8e-6}"


def _write(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_base_merges_mappings_and_stages_by_name(tmp_path):
    _write(tmp_path, "base.yaml", f"model: {{name: tiny, gelu: exact}}\nseed: 3\nstages:\n  - {STAGE}\n"
           "  - {name: tune, image_size: 64, samples: 500, global_batch: 50, warmup_steps: 2}\n")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub", "child.yaml", "base: ../base.yaml\nmodel: {ln_eps: 1.0e-5}\n"
                   "stages:\n  - {name: tune, samples: 1000}\n  - {name: extra, image_size: 32, samples: 200, global_batch: 100}\n")
    cfg = load_config(child)
    assert (cfg.model.name, cfg.model.gelu, cfg.model.ln_eps, cfg.seed) == ("tiny", "exact", 1e-5, 3)
    assert [s.name for s in cfg.stages] == ["tune", "extra"]  # the child's list decides which stages run
    tune = cfg.stage("tune")
    assert (tune.image_size, tune.samples, tune.global_batch, tune.warmup_steps) == (64, 1000, 50, 2)
    assert cfg.stage("extra").warmup_steps == 0  # a new stage starts from the dataclass defaults
    no_stages = load_config(_write(tmp_path, "same.yaml", "base: base.yaml\nseed: 4\n"))
    assert [s.name for s in no_stages.stages] == ["pretrain", "tune"] and no_stages.seed == 4


def test_stage_defaults_sit_under_every_stage_and_yield_to_it(tmp_path):
    text = (f"model: {{name: tiny}}\nstage_defaults: {{betas: [0.8, 0.9], augment: {{hflip_p: 0.5}}}}\nstages:\n  - {STAGE}\n"
            "  - {name: tune, image_size: 32, samples: 1000, global_batch: 100, betas: [0.9, 0.98], augment: {grayscale_p: 0.0}}\n")
    cfg = load_config(_write(tmp_path, "r.yaml", text), ["stage_defaults.eps=1.0e-6"])
    pre, tune = cfg.stages
    assert (pre.betas, pre.eps, pre.augment.hflip_p, pre.augment.grayscale_p) == ((0.8, 0.9), 1e-6, 0.5, 0.2)
    assert (tune.betas, tune.eps, tune.augment.hflip_p, tune.augment.grayscale_p) == ((0.9, 0.98), 1e-6, 0.5, 0.0)
    child = load_config(_write(tmp_path, "c.yaml", "base: r.yaml\nstage_defaults: {betas: [0.5, 0.6]}\n"))
    assert [s.betas for s in child.stages] == [(0.5, 0.6), (0.9, 0.98)]  # defaults apply after the merge


@pytest.mark.parametrize("files, match", [
    ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, r"base: recipes inherit in a cycle: a\.yaml -> b\.yaml -> a\.yaml"),
    ({"a.yaml": "base: a.yaml\n"}, r"cycle: a\.yaml -> a\.yaml"),
    ({"a.yaml": "base: gone.yaml\n"}, r"base: .*a\.yaml names 'gone\.yaml', but there is no such file"),
    ({"a.yaml": "base: [b.yaml]\n"}, r"base: expected a recipe file name"),
    ({"a.yaml": f"model: {{name: tiny}}\nstage_defaults: 3\nstages: [{STAGE}]\n"}, r"stage_defaults: expected a mapping"),
    ({"a.yaml": f"model: {{name: tiny}}\nstage_defaults: {{colour: 1}}\nstages: [{STAGE}]\n"}, r"stages\.pretrain\.colour: unknown key"),
])
def test_bad_inheritance_is_one_line(tmp_path, files, match):
    for name, text in files.items():
        _write(tmp_path, name, text)
    with pytest.raises(ConfigError, match=match) as e:
        load_config(tmp_path / "a.yaml")
    assert "\n" not in str(e.value)


def test_base_as_an_override_is_refused_in_one_line(tmp_path):
    _write(tmp_path, "a.yaml", f"model: {{name: tiny}}\nstages: [{STAGE}]\n")
    with pytest.raises(ConfigError, match=r"^base: write it in the recipe file") as e:
        load_config(tmp_path / "a.yaml", ["base=b.yaml"])
    assert "\n" not in str(e.value)


def test_plan_resolved_prints_the_flattened_recipe(capsys, tmp_path):
    assert main(["plan", str(CONFIGS / "bigg14.yaml"), "stages.pretrain.samples=655360000", "--resolved"]) == 0
    flat = yaml.safe_load(capsys.readouterr().out)
    cfg = load_config(CONFIGS / "bigg14.yaml", ["stages.pretrain.samples=655360000"])
    assert flat == to_dict(cfg) and "base" not in flat and "stage_defaults" not in flat
    assert load_config(_write(tmp_path, "flat.yaml", yaml.safe_dump(flat))) == cfg  # loads back as it stands


TUNING = ("micro_batch", "checkpointing")  # follow the GPU, not the paper


def _differences(a: dict, b: dict, prefix="") -> set:
    out = set()
    for k in (set(a) | set(b)) - set(TUNING):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _differences(va, vb, f"{prefix}{k}.")
        elif k == "stages":
            for sa, sb in zip(va, vb):
                out |= _differences(sa, sb, f"stages.{sa['name']}.")
            out |= {f"stages.{s['name']}" for s in (va[len(vb):] + vb[len(va):])}
        elif va != vb:
            out.add(prefix + k)
    return out


# What each CLIPA-v2 recipe changes against h14.yaml, key by key (the figures: test_recipes.py)
AGAINST_H14 = {
    "l14.yaml": {"model.name", "run_dir", "parallel.bf16_momentum", "cost.budget_usd"},
    "h14_10k.yaml": {"run_dir", "cost.budget_usd", "stages.pretrain.image_size", "stages.finetune336"},
    "bigg14.yaml": {"model.name", "run_dir", "cost.budget_usd",
                    *(f"stages.{s}.weight_decay_rule" for s in ("pretrain", "finetune224", "finetune336")),
                    "stages.pretrain.lr_base", "stages.finetune224.image_mask_ratio", "stages.finetune224.global_batch",
                    "stages.finetune224.warmup_steps"},
}


@pytest.mark.parametrize("name", sorted(AGAINST_H14))
def test_recipes_differ_from_h14_only_where_they_say(name):
    h14 = to_dict(load_config(CONFIGS / "h14.yaml"))
    assert _differences(h14, to_dict(load_config(CONFIGS / name))) == AGAINST_H14[name]


def _leaves(d: dict, prefix=""):
    for k, v in d.items():
        yield from _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if "base" in yaml.safe_load(p.read_text())))
def test_an_inheriting_recipe_states_only_what_differs(path):
    raw = yaml.safe_load(path.read_text())
    base = to_dict(load_config(path.parent / raw.pop("base")))
    base_stages = {s["name"]: s for s in base.pop("stages")}
    top = {k: v for k, v in raw.items() if k not in ("stages", "stage_defaults")}
    base_flat = dict(_leaves(base))
    restated = [k for k, v in _leaves(top) if base_flat[k] == v]
    for key, value in _leaves(raw.get("stage_defaults", {})):
        if all(dict(_leaves(s))[key] == value for s in base_stages.values()):
            restated.append(f"stage_defaults.{key}")
    for stage in raw.get("stages", []):
        given = dict(_leaves(base_stages.get(stage["name"], {})))
        restated += [f"stages.{stage['name']}.{k}" for k, v in _leaves(stage) if k != "name" and given.get(k, object()) == v]
    assert not restated, f"{path.name} restates its base's values"
