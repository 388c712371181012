"""The run configuration: YAML plus dotted `key=value` overrides, typed and validated before
anything is built. A recipe is data: a model name plus an ordered list of stages, possibly
starting from another recipe (`base:`, `stage_defaults:`; clipav2/inherit.py).

    cfg = load_config("configs/h14.yaml", ["stages.pretrain.samples=4096", "parallel.strategy=fsdp"])

Every error is a `ConfigError` whose message names the key and the allowed values.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from clipav2.reduce.text import REDUCTIONS as _TEXT_REDUCTIONS

from clipav2.train.decay import RULES as DECAY_RULES


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key."""


STRATEGIES = ("single", "ddp", "fsdp", "deepspeed")
IMAGE_REDUCTIONS = ("resize", "random", "grid", "block")
TEXT_REDUCTIONS = tuple(_TEXT_REDUCTIONS)  # the registry in clipav2/reduce/text.py
TOKENIZER_MODES = ("clipa", "open_clip", "clip_bpe")
PRECISIONS = ("auto", "fp32", "bf16_autocast", "bf16_params")
EVAL_TRANSFORMS = ("center_crop", "resize")
EVAL_PROTOCOLS = ("clipa", "open_clip")


@dataclass
class ModelConfig:
    name: str = "tiny"
    pos_embed: str = "sincos"  # sincos | learned | sincos_open_clip (CLIPA v1 pre-training)
    gelu: str = "tanh"  # tanh | exact
    ln_eps: float = 1e-6
    attention: str = "sdpa"
    checkpointing: str = "none"  # none | all | every_<k>
    compile: typing.Optional[bool] = None  # None: on CUDA, off on the CPU


@dataclass
class DataConfig:
    train: typing.Optional[str] = None  # shard pattern: brace pattern, comma list, or pipe: URL
    eval: typing.Optional[str] = None  # ImageFolder dir or labelled shards for zero-shot eval
    eval_classnames: str = "imagenet"  # imagenet | demo | path to a text file (one per line)
    eval_templates: str = "imagenet"  # imagenet | demo | path to a text file (one per line)
    retrieval: typing.Optional[str] = None  # image-text shards for recall@k
    vocab: typing.Optional[str] = None  # WordPiece vocabulary file (else CLIPAV2_VOCAB, else hub)
    workers: typing.Optional[int] = None  # loader processes per rank; None: CPUs per GPU - 1 (data.loader)
    shuffle_buffer: int = 10000  # records in the shuffle buffers of ALL ranks and workers together
    prefetch: int = 4
    pin_memory: bool = True
    fast_decode: bool = True
    demo: bool = False  # train/eval on the generated demo data set (RUN_DIR/demo_data, made if missing)


@dataclass
class ParallelConfig:
    strategy: str = "single"
    zero_stage: int = 2
    micro_batch: typing.Union[int, str] = 32  # per GPU, or auto: the largest that fits (a stage may override it)
    grad_accum: typing.Optional[int] = None  # None: global_batch // (world * micro_batch)
    precision: str = "auto"  # auto: bf16_autocast on CUDA, fp32 on the CPU (docs/engine.md)
    reshard_after_forward: bool = True
    hsdp_shard_size: typing.Optional[int] = None  # FSDP2 HSDP: GPUs per shard group (e.g. 8)
    deepspeed_config: typing.Optional[str] = None  # a user's DS JSON merged over ours
    bf16_momentum: bool = False  # CLIPA's bf16 first moment
    fused_optimizer: bool = True
    timeout_minutes: float = 10.0  # collective timeout: a crashed rank stops the others


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    every_minutes: float = 60.0
    keep: int = 3


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    sample_keys: bool = False  # audit trail: RUN_DIR/samples/rank_<r>.txt, one "stage step keys" line per step
    progress_seconds: float = 60.0  # without a terminal: one plain progress line at most this often
    wandb: typing.Optional[str] = None  # a Weights & Biases project (pip install wandb; WANDB_MODE=offline works offline)


@dataclass
class EvalConfig:
    at_stage_end: bool = True  # zero-shot eval after each stage -> RUN_DIR/eval.jsonl
    batch_size: int = 256
    every_samples: int = 0  # also zero-shot every N samples of the recipe (0: off), split over the ranks
    every_minutes: float = 0.0  # also zero-shot every N minutes of training (0: off)
    protocol: str = "clipa"  # clipa | open_clip: prompts, tokenization and resizing (docs/eval.md)


@dataclass
class FaultConfig:
    max_consecutive_skips: int = 10


@dataclass
class CostConfig:
    gpu: str = "auto"  # auto (from the device name) | a key of clipav2.cost.prices
    price_per_gpu_hour: typing.Optional[float] = None
    budget_usd: typing.Optional[float] = None
    stop_fraction: float = 1.0


@dataclass
class AugmentConfig:
    crop_scale: tuple[float, float] = (0.40, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    random_resized_crop: bool = True
    crop_interpolation: str = "bilinear"  # bilinear (JAX inception crop) | bicubic (open_clip, CLIPA v1)
    color_jitter: tuple[float, float, float, float] = (0.32, 0.32, 0.32, 0.08)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    hflip_p: float = 0.0


@dataclass
class StageConfig:
    name: str = "pretrain"
    image_size: int = 224
    image_reduction: str = "resize"  # resize | random | grid | block
    image_mask_ratio: float = 0.0  # fraction of patch tokens dropped (random, block)
    grid_window: int = 2  # grid: keep one patch per k x k window
    text_len: int = 32
    text_reduction: str = "truncate"
    tokenizer_mode: str = "clipa"  # clipa ([CLS] + L-1 pieces) | open_clip ([CLS] + L-2 pieces) | clip_bpe (CLIPA v1)
    samples: int = 0
    global_batch: int = 256
    micro_batch: typing.Optional[int] = None  # overrides parallel.micro_batch for this stage
    lr_base: float = 8e-6  # peak LR = lr_base * global_batch / lr_base_batch
    lr_base_batch: int = 256
    warmup_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.2
    weight_decay_rule: str = "kernels"  # kernels | kernels_and_tokens | matrices (clipav2.train.decay)
    grad_clip: typing.Optional[float] = None  # CLIPA uses none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_transform: str = "center_crop"  # pre-training: center_crop; fine-tune: resize
    init_from: typing.Optional[str] = None  # ours (.safetensors) or an open_clip checkpoint
    # "learned": from this stage on the image position table is learned, starting from its
    # current (sin-cos) values resampled to the stage's grid (CLIPA v1 fine-tuning, --pos-embed learnable)
    pos_embed: typing.Optional[str] = None

    @property
    def steps(self) -> int:
        return self.samples // self.global_batch

    @property
    def peak_lr(self) -> float:
        return self.lr_base * self.global_batch / self.lr_base_batch


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    run_dir: str = "runs/default"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    stages: list[StageConfig] = field(default_factory=list)

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise ConfigError(f"stages: no stage named {name!r}; stages are {[s.name for s in self.stages]}")


# ---------------------------------------------------------------- building from plain data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp` (converting YAML's lists to tuples)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # the first type the value fits (e.g. int | "auto")
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        return _coerce(value, args[-1], key)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        names = [v.get("name") if isinstance(v, dict) else None for v in value]
        return [_coerce(v, arg, f"{key}.{n}" if n else f"{key}[{i}]") for i, (v, n) in enumerate(zip(value, names))]
    if tp is float:
        if isinstance(value, str):  # PyYAML reads 8e-6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # NaN passes every range check below, inf breaks the schedule
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (line {key_node.start_mark.line + 1})", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_scalar(text: str):
    return yaml.safe_load(text) if text.strip() else ""


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
    node[parts[-1]] = _parse_scalar(text)


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, allowed))}")


def validate(cfg: Config, world_size: int | None = None) -> Config:
    """Semantic checks that need no model. `world_size` (when known) checks batch divisibility."""
    from clipav2.models.arch import ARCHITECTURES, ATTENTION_BACKENDS, POS_EMBEDS

    m = cfg.model
    if m.name not in ARCHITECTURES:
        raise ConfigError(f"model.name: unknown architecture {m.name!r}; known: {', '.join(ARCHITECTURES)}")
    _check_choice("model.pos_embed", m.pos_embed, POS_EMBEDS)
    _check_choice("model.gelu", m.gelu, ("tanh", "exact"))
    _check_choice("model.attention", m.attention, ATTENTION_BACKENDS)
    if not (m.checkpointing in ("none", "all") or _every_k(m.checkpointing)):
        raise ConfigError(f"model.checkpointing: {m.checkpointing!r} is not one of none, all, every_<k> (k >= 1)")
    if not 0 < m.ln_eps < 1:
        raise ConfigError(f"model.ln_eps: {m.ln_eps} must be in (0, 1)")
    p = cfg.parallel
    _check_choice("parallel.strategy", p.strategy, STRATEGIES)
    if p.strategy == "single" and world_size is not None and world_size > 1:
        raise ConfigError(f"parallel.strategy: single runs one process but the launcher started {world_size}; use ddp, fsdp or deepspeed")
    _check_choice("parallel.zero_stage", p.zero_stage, (1, 2, 3))
    _check_choice("parallel.precision", p.precision, PRECISIONS)
    if isinstance(p.micro_batch, str):
        _check_choice("parallel.micro_batch", p.micro_batch, ("auto",))
    else:
        _positive("parallel.micro_batch", p.micro_batch)
    if p.grad_accum is not None:
        _positive("parallel.grad_accum", p.grad_accum)
    if p.hsdp_shard_size is not None:
        _positive("parallel.hsdp_shard_size", p.hsdp_shard_size)
    if p.deepspeed_config is not None and not Path(p.deepspeed_config).is_file():
        raise ConfigError(f"parallel.deepspeed_config: no such file {p.deepspeed_config!r}")
    if p.timeout_minutes <= 0:
        raise ConfigError(f"parallel.timeout_minutes: {p.timeout_minutes} must be > 0")
    d = cfg.data
    for key in ("workers", "shuffle_buffer", "prefetch"):
        if getattr(d, key) is not None and getattr(d, key) < 0:
            raise ConfigError(f"data.{key}: {getattr(d, key)} must be >= 0")
    if d.vocab is not None and not Path(d.vocab).is_file():
        raise ConfigError(f"data.vocab: no such file {d.vocab!r}")
    _positive("checkpoint.every_steps", cfg.checkpoint.every_steps)
    _positive("checkpoint.keep", cfg.checkpoint.keep)
    if cfg.checkpoint.every_minutes <= 0:
        raise ConfigError(f"checkpoint.every_minutes: {cfg.checkpoint.every_minutes} must be > 0")
    _positive("log.every_steps", cfg.log.every_steps)
    _positive("eval.batch_size", cfg.eval.batch_size)
    for key in ("every_samples", "every_minutes"):
        if getattr(cfg.eval, key) < 0:
            raise ConfigError(f"eval.{key}: {getattr(cfg.eval, key)} must be >= 0 (0: off)")
    if cfg.log.progress_seconds <= 0:
        raise ConfigError(f"log.progress_seconds: {cfg.log.progress_seconds} must be > 0")
    if cfg.log.wandb:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError(f"log.wandb: {cfg.log.wandb!r} needs the wandb package (pip install wandb), which is not installed")
    _check_choice("eval.protocol", cfg.eval.protocol, EVAL_PROTOCOLS)
    _positive("faults.max_consecutive_skips", cfg.faults.max_consecutive_skips)
    c = cfg.cost
    if c.price_per_gpu_hour is not None and c.price_per_gpu_hour < 0:
        raise ConfigError(f"cost.price_per_gpu_hour: {c.price_per_gpu_hour} must be >= 0")
    if c.budget_usd is not None and c.budget_usd <= 0:
        raise ConfigError(f"cost.budget_usd: {c.budget_usd} must be > 0")
    if not 0 < c.stop_fraction <= 1:
        raise ConfigError(f"cost.stop_fraction: {c.stop_fraction} must be in (0, 1]")
    if not cfg.stages:
        raise ConfigError("stages: a recipe needs at least one stage")
    patch = ARCHITECTURES[m.name].vision.patch_size
    seen = set()
    for i, s in enumerate(cfg.stages):
        _validate_stage(s, f"stages.{s.name}" if s.name else f"stages[{i}]", patch, cfg, world_size)
        if s.name in seen:
            raise ConfigError(f"stages.{s.name}.name: duplicate stage name")
        seen.add(s.name)
    return cfg


def _every_k(text: str) -> bool:
    head, _, k = text.partition("_")
    return head == "every" and k.isdigit() and int(k) >= 1


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: {value} must be > 0")


def _validate_stage(s: StageConfig, key: str, patch: int, cfg: Config, world_size) -> None:
    if not s.name or not s.name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"{key}.name: {s.name!r} must be a non-empty word (letters, digits, _ or -)")
    _positive(f"{key}.image_size", s.image_size)
    if s.image_size % patch:
        raise ConfigError(f"{key}.image_size: {s.image_size} is not a multiple of the patch size {patch} of {cfg.model.name}")
    _check_choice(f"{key}.image_reduction", s.image_reduction, IMAGE_REDUCTIONS)
    if not 0 <= s.image_mask_ratio < 1:
        raise ConfigError(f"{key}.image_mask_ratio: {s.image_mask_ratio} must be in [0, 1)")
    if s.image_reduction == "grid":
        grid = s.image_size // patch
        if s.grid_window < 1 or grid % s.grid_window:
            raise ConfigError(f"{key}.grid_window: {s.grid_window} does not divide the {grid}x{grid} patch grid")
    if s.image_reduction == "resize" and s.image_mask_ratio:
        raise ConfigError(f"{key}.image_mask_ratio: must be 0 with image_reduction resize (use random, grid or block)")
    if s.text_len < 2:
        raise ConfigError(f"{key}.text_len: {s.text_len} must be >= 2 ([CLS] plus one piece)")
    _check_choice(f"{key}.text_reduction", s.text_reduction, TEXT_REDUCTIONS)
    _check_choice(f"{key}.tokenizer_mode", s.tokenizer_mode, TOKENIZER_MODES)
    if s.tokenizer_mode == "clip_bpe" and s.text_reduction not in ("truncate", "syntax"):
        raise ConfigError(f"{key}.text_reduction: {s.text_reduction!r} is not available with tokenizer_mode clip_bpe (truncate, syntax)")
    _check_choice(f"{key}.eval_transform", s.eval_transform, EVAL_TRANSFORMS)
    if s.samples <= 0:
        raise ConfigError(f"{key}.samples: {s.samples} must be > 0")
    _positive(f"{key}.global_batch", s.global_batch)
    if s.samples < s.global_batch:
        raise ConfigError(f"{key}.samples: {s.samples} is less than one global batch ({s.global_batch})")
    if s.micro_batch is not None:
        _positive(f"{key}.micro_batch", s.micro_batch)
    if s.lr_base <= 0:
        raise ConfigError(f"{key}.lr_base: {s.lr_base} must be > 0")
    _positive(f"{key}.lr_base_batch", s.lr_base_batch)
    if s.warmup_steps < 0 or s.warmup_steps > s.steps:
        raise ConfigError(f"{key}.warmup_steps: {s.warmup_steps} must be in [0, steps={s.steps}]")
    if not all(0 <= b < 1 for b in s.betas):
        raise ConfigError(f"{key}.betas: {s.betas} must each be in [0, 1)")
    if s.eps <= 0:
        raise ConfigError(f"{key}.eps: {s.eps} must be > 0")
    if s.weight_decay < 0:
        raise ConfigError(f"{key}.weight_decay: {s.weight_decay} must be >= 0")
    _check_choice(f"{key}.weight_decay_rule", s.weight_decay_rule, DECAY_RULES)
    if s.grad_clip is not None and s.grad_clip <= 0:
        raise ConfigError(f"{key}.grad_clip: {s.grad_clip} must be > 0 (or null for none)")
    a = s.augment
    lo, hi = a.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{key}.augment.crop_scale: {a.crop_scale} must satisfy 0 < min <= max <= 1")
    if not 0 < a.crop_ratio[0] <= a.crop_ratio[1]:
        raise ConfigError(f"{key}.augment.crop_ratio: {a.crop_ratio} must satisfy 0 < min <= max")
    _check_choice(f"{key}.augment.crop_interpolation", a.crop_interpolation, ("bilinear", "bicubic"))
    for name in ("color_jitter_p", "grayscale_p", "hflip_p"):
        if not 0 <= getattr(a, name) <= 1:
            raise ConfigError(f"{key}.augment.{name}: {getattr(a, name)} must be in [0, 1]")
    if any(v < 0 for v in a.color_jitter) or a.color_jitter[3] > 0.5:
        raise ConfigError(f"{key}.augment.color_jitter: {a.color_jitter} must be >= 0 with hue <= 0.5")
    if s.pos_embed not in (None, "learned"):
        raise ConfigError(f"{key}.pos_embed: {s.pos_embed!r} must be learned or left out")
    if s.init_from is not None and not Path(s.init_from).exists():
        raise ConfigError(f"{key}.init_from: no such file {s.init_from!r}")
    if world_size is not None:
        micro = micro_batch_of(cfg, s, world_size)
        accum = cfg.parallel.grad_accum
        if accum is None:
            if s.global_batch % (world_size * micro):
                raise ConfigError(
                    f"{key}.global_batch: {s.global_batch} is not divisible by world size {world_size} x micro_batch {micro}"
                )
        elif s.global_batch != world_size * micro * accum:
            raise ConfigError(
                f"{key}.global_batch: {s.global_batch} != world size {world_size} x micro_batch {micro} x grad_accum {accum}"
            )


def micro_batch_of(cfg: Config, stage: StageConfig, world_size: int) -> int:
    """The stage's micro-batch per rank. `auto` not yet fitted to the device
    (`parallel.micro_batch_fit`, at a stage's start) means the whole per-rank batch."""
    micro = stage.micro_batch or cfg.parallel.micro_batch
    return stage.global_batch // world_size if micro == "auto" else micro


def grad_accum_steps(cfg: Config, stage: StageConfig, world_size: int) -> int:
    """Micro-steps per optimizer step for this stage (validated above)."""
    micro = micro_batch_of(cfg, stage, world_size)
    return cfg.parallel.grad_accum or stage.global_batch // (world_size * micro)


def load_config(path=None, overrides=(), world_size: int | None = None, check_data: bool = False) -> Config:
    """Read a YAML recipe (or start from defaults), apply overrides, build and validate."""
    from clipav2.inherit import apply_stage_defaults, read_recipe

    raw = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config: no such file {str(path)!r}")
        raw = read_recipe(path, _read_yaml)
    for item in overrides:
        apply_override(raw, item)
    apply_stage_defaults(raw)
    if "stages" in raw and not isinstance(raw["stages"], list):
        raise ConfigError("stages: expected a list of stages")
    cfg = _build(Config, raw, "")
    validate(cfg, world_size)
    if check_data:
        check_data_paths(cfg)
    return cfg


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
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


def to_dict(cfg: Config) -> dict:
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
