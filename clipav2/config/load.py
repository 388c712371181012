"""A recipe from YAML plus dotted `key=value` overrides into a typed, checked `Config`
(`clipav2.config.schema`), after its inheritance (`base:`, `stage_defaults:`; inherit.py) is
applied; and back to YAML for RUN_DIR/config.yaml.

    cfg = load_config("configs/h14.yaml", ["stages.pretrain.samples=4096", "parallel.strategy=fsdp"])
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path

import yaml

from clipav2.config.schema import Config, ConfigError, short_repr


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _as_float(value, key: str) -> float:
    if isinstance(value, str):  # PyYAML reads 8e-6 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {short_repr(value)}")
    if not math.isfinite(value):  # NaN passes every range check, inf breaks the schedule
        raise ConfigError(f"{key}: {short_repr(value)} is not a finite number")
    return float(value)


def _as_int(value, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {short_repr(value)}")
    if not -MAX_INT < value < MAX_INT:
        raise ConfigError(f"{key}: an integer of {len(str(abs(value)))} digits is out of range (at most 2**63 - 1)")
    return value


def _as_bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {short_repr(value)}")
    return value


def _as_str(value, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {short_repr(value)}")
    return value


_SCALARS = {float: _as_float, int: _as_int, bool: _as_bool, str: _as_str}


def _coerce_union(value, tp, key: str):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if value is None:
        return None
    for arg in args[:-1]:  # the first type the value fits (e.g. int | "auto")
        try:
            return _coerce(value, arg, key)
        except ConfigError:
            pass
    return _coerce(value, args[-1], key)


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp` (converting YAML's lists to tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {short_repr(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {short_repr(value)}")
        names = [v.get("name") if isinstance(v, dict) else None for v in value]
        return [_coerce(v, arg, f"{key}.{n}" if n else f"{key}[{i}]") for i, (v, n) in enumerate(zip(value, names))]
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {short_repr(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields, key=str)  # keys may be numbers, null, dates
    if unknown:
        where = f"{prefix}." if prefix else ""
        name = unknown[0] if isinstance(unknown[0], str) and unknown[0].isidentifier() else short_repr(unknown[0])
        raise ConfigError(f"{where}{name}: unknown key; allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


MAX_DEPTH = 64  # nesting levels of a recipe (ours use 4)
MAX_NODES = 100_000  # values of a recipe with its aliases expanded (ours have a few hundred)
MAX_INT = 2**63  # what every integer setting must stay under (a seed, a sample count)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last), a
    document nested deeper than MAX_DEPTH (PyYAML recurses) and one whose aliases expand to more
    than MAX_NODES values (a few hundred bytes of `&a [*b, *b, ...]` can stand for billions)."""

    def compose_node(self, parent, index):
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        expanded = _expanded_size(node, {})
        if expanded > MAX_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases expand to {expanded:,} values (at most {MAX_NODES:,})", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node, memo: dict) -> int:
    """How many values `node` stands for once every alias is expanded (shared nodes counted per use)."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a node reached again while being sized (a recursive alias) counts once
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = min(size, MAX_NODES + 1)
    return memo[id(node)]


def parse_yaml(text, where: str):
    """One YAML document of `text` (str or bytes), or a ConfigError naming `where` and the reason:
    not UTF-8, not YAML, nested too deep, an alias bomb, an integer of thousands of digits."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{where}: not UTF-8 text (byte {e.start}: {text[e.start:e.start + 1]!r})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{where}: not valid YAML: {problem}{at}") from None
    except (ValueError, IndexError, TypeError, OverflowError, RecursionError) as e:
        # a tagged or oversized scalar PyYAML's constructors fail on: `!!int` of nothing, a number
        # longer than Python's digit limit, `!!float x`...
        reason = " ".join(str(e).split(":")[0].split()) or type(e).__name__
        raise ConfigError(f"{where}: a value that cannot be read ({reason})") from None


def _parse_scalar(text: str, item: str):
    """An override's value: one line of YAML."""
    if "\n" in text or "\r" in text:
        raise ConfigError(f"override {short_repr(item.splitlines()[0])}...: a value must be one line")
    return parse_yaml(text, f"override {short_repr(item)}") if text.strip() else ""


def apply_override(raw: dict, item: str) -> None:
    """Apply one `a.b.c=value` to the raw YAML mapping. `stages.NAME.key` addresses a stage by
    name (or by index)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    dotted, text = item.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key component")
    node = raw
    for i, part in enumerate(parts[:-1]):
        key = ".".join(parts[: i + 1])
        if isinstance(node, list):
            matches = [s for s in node if isinstance(s, dict) and s.get("name") == part]
            if not matches and part.isdigit() and int(part) < len(node):
                matches = [node[int(part)]]
            if not matches:
                names = [s.get("name") for s in node if isinstance(s, dict)]
                raise ConfigError(f"{key}: no stage named {part!r}; stages are {names}")
            node = matches[0]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: cannot set a sub-key of a non-mapping")
            node = node.setdefault(part, {} if parts[i + 1] != "stages" else [])
    if isinstance(node, list):
        raise ConfigError(f"{dotted}: address a stage by name, e.g. stages.pretrain.samples=4096")
    if not isinstance(node, dict):
        raise ConfigError(f"{'.'.join(parts[:-1])}: is {node!r}, not a mapping; {dotted} cannot be set")
    node[parts[-1]] = _parse_scalar(text, item)


def load_config(path=None, overrides=(), world_size: int | None = None, check_data: bool = False) -> Config:
    """Read a YAML recipe (or start from defaults), apply overrides, build and validate."""
    from clipav2.config.inherit import apply_stage_defaults, read_recipe

    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such file {str(path)!r}")
        raw = read_recipe(path, _read_yaml)
    for item in overrides:
        apply_override(raw, item)
    if "base" in raw:  # read_recipe has merged (and removed) the file's own
        raise ConfigError("base: write it in the recipe file; an override cannot change which recipe a file starts from")
    apply_stage_defaults(raw)
    if "stages" in raw and not isinstance(raw["stages"], list):
        raise ConfigError("stages: expected a list of stages")
    cfg = _build(Config, raw, "")
    cfg.validate(world_size)
    if check_data:
        check_data_paths(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"config: cannot read {path}: {e.strerror}") from None
    raw = parse_yaml(data, f"config: {path}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: {path} must hold a mapping at the top level")
    return raw


def check_data_paths(cfg: Config) -> None:
    """Training needs shards (and evaluation its set); say so before building anything. With
    `data.demo` the training and evaluation sets are generated into the run directory, so a
    missing `data.train` / `data.eval` is fine there."""
    d = cfg.data
    if not d.train and not d.demo:
        raise ConfigError("data.train: no training shards given (a pattern like /data/shards/{00000..00099}.tar, or data.demo=true)")
    from clipav2.data.shards import expand_urls  # the data package owns pattern semantics

    for key in ("train", "eval", "retrieval"):
        value = getattr(d, key)
        if not value or (key == "eval" and Path(value).is_dir()):
            continue
        try:
            expand_urls(value)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"data.{key}: {str(e).splitlines()[0] if str(e) else value!r}") from None
    for key in ("eval_classnames", "eval_templates"):
        value = getattr(d, key)
        if value not in ("imagenet", "demo") and not Path(value).is_file():
            raise ConfigError(f"data.{key}: {value!r} is not imagenet, demo, or an existing text file")


def to_dict(cfg) -> dict:
    """A config (or any of its sections) as plain YAML data: tuples become lists."""
    def plain(x):
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x

    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML: what RUN_DIR/config.yaml holds and `clipav2 plan --resolved` prints."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, run_dir=None) -> Path:
    """Write the resolved config to RUN_DIR/config.yaml (atomically)."""
    out = Path(run_dir or cfg.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "config.yaml.tmp"
    tmp.write_text(to_yaml(cfg))
    os.replace(tmp, out / "config.yaml")
    return out / "config.yaml"
