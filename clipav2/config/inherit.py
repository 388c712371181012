"""Recipes that inherit, so a recipe states only what differs (docs/recipes.md, "Inheritance").

- `base: h14.yaml` (relative to the recipe's own folder) starts from that recipe's mapping:
  mappings merge key by key, any other value replaces the base's. `stages` merge by name: a
  recipe without `stages` keeps the base's; one with `stages` runs exactly the stages it lists,
  each starting from the base's stage of the same name (if there is one).
- `stage_defaults:` is merged under every stage, after the bases and overrides are applied.

The result is a plain mapping for `clipav2.config.load` to type and validate.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from clipav2.config.schema import ConfigError


def read_recipe(path: Path, read: Callable[[Path], dict], chain: tuple = ()) -> dict:
    """The mapping at `path` (read by `read`) with its `base:` chain merged under it."""
    if path.resolve() in chain:
        names = " -> ".join(p.name for p in (*chain, path.resolve()))
        raise ConfigError(f"base: recipes inherit in a cycle: {names}")
    raw = read(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ConfigError(f"base: expected a recipe file name in {path}, got {base!r}")
    base_path = path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"base: {path} names {base!r}, but there is no such file {str(base_path)!r}")
    return merge_recipes(read_recipe(base_path, read, (*chain, path.resolve())), raw)


def merge_recipes(base: dict, over: dict) -> dict:
    """`over` merged over `base`, stages by name."""
    merged = _merge({k: v for k, v in base.items() if k != "stages"}, {k: v for k, v in over.items() if k != "stages"})
    if "stages" in over:
        merged["stages"] = _merge_stages(base.get("stages"), over["stages"])
    elif "stages" in base:
        merged["stages"] = base["stages"]
    return merged


def apply_stage_defaults(raw: dict) -> dict:
    """Merge `stage_defaults` under every stage and drop the key."""
    defaults = raw.pop("stage_defaults", None)
    if defaults is None:
        return raw
    if not isinstance(defaults, dict):
        raise ConfigError(f"stage_defaults: expected a mapping of stage keys, got {defaults!r}")
    stages = raw.get("stages")
    if isinstance(stages, list):
        raw["stages"] = [_merge(defaults, s) if isinstance(s, dict) else s for s in stages]
    return raw


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both_maps = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merge(out[key], value) if both_maps else value
    return out


def _merge_stages(base, over):
    if not isinstance(base, list) or not isinstance(over, list):
        return over  # a malformed list is reported by the config builder
    by_name = {s.get("name"): s for s in base if isinstance(s, dict)}
    return [_merge(by_name.get(s.get("name"), {}), s) if isinstance(s, dict) else s for s in over]
