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
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml



class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key (whitespace a key or value
    brought in, newlines included, is folded so it stays one line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {_short(value)} is not one of {', '.join(map(str, allowed))}")


def _positive(key: str, value) -> None:
    if value <= 0:
        raise ConfigError(f"{key}: {value} must be > 0")


def _non_negative(key: str, value) -> None:
    if value is not None and value < 0:
        raise ConfigError(f"{key}: {value} must be >= 0")


def _owned(key: str, check, *args) -> None:
    """Run an owning module's check (a ValueError "field: problem") as a ConfigError under `key`."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(f"{key}.{e}" if str(e).split(":")[0].isidentifier() else f"{key}: {e}") from None


def _host_memory() -> int:
    """Bytes of RAM on this machine (what no single tensor of a run can exceed)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _check_fits_memory(key: str, stage, arch, micro: int) -> None:
    """A stage whose inputs or position tables alone exceed this machine's memory (a typo'd
    image_size or text_len) is refused now, not by an allocation failure after the build."""
    memory = _host_memory()
    tokens = (stage.image_size // arch.vision.patch_size) ** 2
    needs = {"image_size": max(micro * 3 * stage.image_size**2, tokens * arch.vision.width * 4),
             "text_len": stage.text_len * max(arch.text.width * 4, micro * 8)}
    for name, bytes_ in needs.items():
        if bytes_ > memory:
            raise ConfigError(f"{key}.{name}: {getattr(stage, name)} needs {bytes_ / 2**30:,.0f} GiB for its inputs "
                              f"or position table alone; this machine has {memory / 2**30:,.0f} GiB")


def _wandb_login() -> bool:
    """True if wandb can log without asking: an API key, an offline/disabled mode, or a netrc
    entry from `wandb login`."""
    import netrc

    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def read_deepspeed_json(path: str) -> dict:
    """The user's DeepSpeed JSON (`parallel.deepspeed_config`): a mapping, or a ConfigError."""
    import json

    key = "parallel.deepspeed_config"
    if not Path(path).is_file():
        raise ConfigError(f"{key}: no such file {path!r}")
    try:
        data = json.loads(Path(path).read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"{key}: {path} is not valid JSON ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}: {path} must hold a JSON object, not a {type(data).__name__}")
    return data


# what the recipe decides, so a user's DeepSpeed JSON may not say otherwise
DEEPSPEED_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def check_deepspeed_json(cfg, world_size: int) -> None:
    """The user's JSON agrees with the recipe on each stage's batch split and the ZeRO stage."""
    user = read_deepspeed_json(cfg.parallel.deepspeed_config)
    zero = user.get("zero_optimization", {})
    if isinstance(zero, dict) and "stage" in zero and zero["stage"] != cfg.parallel.zero_stage:
        raise ConfigError(f"parallel.deepspeed_config: zero_optimization.stage {zero['stage']!r} conflicts with "
                          f"parallel.zero_stage {cfg.parallel.zero_stage}; set the ZeRO stage in the recipe only")
    for stage in cfg.stages:
        micro, accum = cfg.batch_split(stage, world_size)
        ours = dict(zip(DEEPSPEED_OWNED, (stage.global_batch, micro, accum)))
        for name in DEEPSPEED_OWNED:
            if name in user and user[name] != ours[name] and cfg.parallel.micro_batch != "auto":
                raise ConfigError(f"parallel.deepspeed_config: {name} {user[name]!r} conflicts with stage {stage.name} "
                                  f"({name} {ours[name]} from global_batch, micro_batch and world size); "
                                  "set batch sizes in the recipe only")


MAX_PREFETCH = 256  # batches each loader worker keeps ready: beyond this only memory grows


@dataclass
class ModelConfig:
    name: str = "tiny"
    pos_embed: str = "sincos"  # sincos | learned | sincos_open_clip (CLIPA v1 pre-training)
    gelu: str = "tanh"  # tanh | exact
    ln_eps: float = 1e-6
    attention: str = "sdpa"
    checkpointing: str = "none"  # none | all | every_<k>
    compile: typing.Optional[bool] = None  # None: on CUDA, off on the CPU

    def validate(self, key: str) -> None:
        from clipav2.models.arch import ARCHITECTURES, ATTENTION_BACKENDS, GELUS, POS_EMBEDS
        from clipav2.parallel.apply import checkpoint_flags

        if self.name not in ARCHITECTURES:
            raise ConfigError(f"{key}.name: unknown architecture {self.name!r}; known: {', '.join(ARCHITECTURES)}")
        _check_choice(f"{key}.pos_embed", self.pos_embed, POS_EMBEDS)
        _check_choice(f"{key}.gelu", self.gelu, GELUS)
        _check_choice(f"{key}.attention", self.attention, ATTENTION_BACKENDS)
        _owned(key, checkpoint_flags, self.checkpointing, 1)
        if not 0 < self.ln_eps < 1:
            raise ConfigError(f"{key}.ln_eps: {self.ln_eps} must be in (0, 1)")

    def options(self) -> dict:
        """The switches `create_model` / `get_arch` take as overrides."""
        return dict(pos_embed=self.pos_embed, gelu=self.gelu, ln_eps=self.ln_eps, attention=self.attention)


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

    def validate(self, key: str) -> None:
        for name in ("workers", "shuffle_buffer", "prefetch"):
            _non_negative(f"{key}.{name}", getattr(self, name))
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if self.workers is not None and self.workers > 4 * cpus:
            raise ConfigError(f"{key}.workers: {self.workers} loader processes per rank on {cpus} CPUs would only "
                              f"compete for them (at most {4 * cpus} here); leave data.workers unset to use what there is")
        if self.prefetch > MAX_PREFETCH:
            raise ConfigError(f"{key}.prefetch: {self.prefetch} batches per worker; at most {MAX_PREFETCH} "
                              "(more only holds more memory)")
        if self.vocab is not None and not Path(self.vocab).is_file():
            raise ConfigError(f"{key}.vocab: no such file {self.vocab!r}")


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

    def validate(self, key: str) -> None:
        from clipav2.parallel import STRATEGIES
        from clipav2.parallel.base import PRECISIONS
        from clipav2.parallel.deepspeed_strategy import ZERO_STAGES

        _check_choice(f"{key}.strategy", self.strategy, STRATEGIES)
        _check_choice(f"{key}.zero_stage", self.zero_stage, ZERO_STAGES)
        _check_choice(f"{key}.precision", self.precision, PRECISIONS)
        if isinstance(self.micro_batch, str):
            _check_choice(f"{key}.micro_batch", self.micro_batch, ("auto",))
        else:
            _positive(f"{key}.micro_batch", self.micro_batch)
        for name in ("grad_accum", "hsdp_shard_size"):
            if getattr(self, name) is not None:
                _positive(f"{key}.{name}", getattr(self, name))
        if self.deepspeed_config is not None:
            read_deepspeed_json(self.deepspeed_config)
        _positive(f"{key}.timeout_minutes", self.timeout_minutes)
        if self.strategy == "deepspeed":
            import importlib.util

            if importlib.util.find_spec("deepspeed") is None:
                raise ConfigError(f"{key}.strategy: deepspeed is not installed (pip install deepspeed)")

    def validate_world(self, key: str, world_size: int) -> None:
        """What needs the launcher's world size (known before any process group exists)."""
        if self.strategy == "single" and world_size > 1:
            raise ConfigError(f"{key}.strategy: single runs one process but the launcher started {world_size}; "
                              "use ddp, fsdp or deepspeed")
        if self.strategy == "fsdp" and self.hsdp_shard_size is not None and world_size % self.hsdp_shard_size:
            raise ConfigError(f"{key}.hsdp_shard_size: {self.hsdp_shard_size} does not divide the world size {world_size}")


@dataclass
class CheckpointConfig:
    every_steps: int = 1000
    every_minutes: float = 60.0
    keep: int = 3

    def validate(self, key: str) -> None:
        for name in ("every_steps", "every_minutes", "keep"):
            _positive(f"{key}.{name}", getattr(self, name))


@dataclass
class LogConfig:
    every_steps: int = 10
    tensorboard: bool = True
    progress: bool = True
    sample_keys: bool = False  # audit trail: RUN_DIR/samples/rank_<r>.txt, one "stage step keys" line per step
    progress_seconds: float = 60.0  # without a terminal: one plain progress line at most this often
    wandb: typing.Optional[str] = None  # a Weights & Biases project (pip install wandb; WANDB_MODE=offline works offline)

    def validate(self, key: str) -> None:
        _positive(f"{key}.every_steps", self.every_steps)
        _positive(f"{key}.progress_seconds", self.progress_seconds)
        if self.wandb:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise ConfigError(f"{key}.wandb: {self.wandb!r} needs the wandb package (pip install wandb), which is not installed")
            if not _wandb_login():
                raise ConfigError(f"{key}.wandb: {self.wandb!r} needs a Weights & Biases login: run `wandb login`, "
                                  "set WANDB_API_KEY, or set WANDB_MODE=offline")


@dataclass
class EvalConfig:
    at_stage_end: bool = True  # zero-shot eval after each stage -> RUN_DIR/eval.jsonl
    batch_size: int = 256
    every_samples: int = 0  # also zero-shot every N samples of the recipe (0: off), split over the ranks
    every_minutes: float = 0.0  # also zero-shot every N minutes of training (0: off)
    protocol: str = "clipa"  # clipa | open_clip: prompts, tokenization and resizing (docs/eval.md)

    def validate(self, key: str) -> None:
        from clipav2.eval.protocol import PROTOCOLS

        _positive(f"{key}.batch_size", self.batch_size)
        for name in ("every_samples", "every_minutes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name}: {getattr(self, name)} must be >= 0 (0: off)")
        _check_choice(f"{key}.protocol", self.protocol, PROTOCOLS)


@dataclass
class FaultConfig:
    max_consecutive_skips: int = 10

    def validate(self, key: str) -> None:
        _positive(f"{key}.max_consecutive_skips", self.max_consecutive_skips)


@dataclass
class CostConfig:
    gpu: str = "auto"  # auto (from the device name) | a key of clipav2.cost.prices
    price_per_gpu_hour: typing.Optional[float] = None
    budget_usd: typing.Optional[float] = None
    stop_fraction: float = 1.0

    def validate(self, key: str) -> None:
        from clipav2.cost.prices import PriceError, get_accelerator

        if self.gpu != "auto":
            try:
                get_accelerator(self.gpu)
            except PriceError as e:
                raise ConfigError(f"{key}.gpu: {e}") from None
        _non_negative(f"{key}.price_per_gpu_hour", self.price_per_gpu_hour)
        if self.budget_usd is not None:
            _positive(f"{key}.budget_usd", self.budget_usd)
        if not 0 < self.stop_fraction <= 1:
            raise ConfigError(f"{key}.stop_fraction: {self.stop_fraction} must be in (0, 1]")


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

    def validate(self, key: str) -> None:
        from clipav2.data.transforms import INTERPOLATIONS

        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"{key}.crop_scale: {self.crop_scale} must satisfy 0 < min <= max <= 1")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"{key}.crop_ratio: {self.crop_ratio} must satisfy 0 < min <= max")
        _check_choice(f"{key}.crop_interpolation", self.crop_interpolation, INTERPOLATIONS)
        for name in ("color_jitter_p", "grayscale_p", "hflip_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{key}.{name}: {getattr(self, name)} must be in [0, 1]")
        if any(v < 0 for v in self.color_jitter) or self.color_jitter[3] > 0.5:
            raise ConfigError(f"{key}.color_jitter: {self.color_jitter} must be >= 0 with hue <= 0.5")


MAX_SANE = 1.0  # of a stage's peak LR and weight decay (CLIPA's are 1e-3 and 0.2)


@dataclass
class StageConfig:
    name: str = "pretrain"
    image_size: int = 224
    image_reduction: str = "resize"  # resize | random | grid | block (clipav2.reduce.image)
    image_mask_ratio: float = 0.0  # fraction of patch tokens dropped (random, block)
    grid_window: int = 2  # grid: keep one patch per k x k window
    text_len: int = 32
    text_reduction: str = "truncate"  # clipav2.reduce.text
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
    # A peak LR or a weight decay above 1 diverges (loss NaN, weights ~1e29) and is refused as a
    # typo unless this is true.
    force_optimizer_range: bool = False

    @property
    def steps(self) -> int:
        return self.samples // self.global_batch

    @property
    def peak_lr(self) -> float:
        return self.lr_base * self.global_batch / self.lr_base_batch

    def validate(self, key: str, model: str, patch: int) -> None:
        """Everything about the stage alone, given the model's name and patch size."""
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{key}.name: {self.name!r} must be a non-empty word (letters, digits, _ or -)")
        _positive(f"{key}.image_size", self.image_size)
        if self.image_size % patch:
            raise ConfigError(f"{key}.image_size: {self.image_size} is not a multiple of the patch size {patch} of {model}")
        self._validate_reductions(key, patch)
        _positive(f"{key}.samples", self.samples)
        _positive(f"{key}.global_batch", self.global_batch)
        if self.samples < self.global_batch:
            raise ConfigError(f"{key}.samples: {self.samples} is less than one global batch ({self.global_batch})")
        for name in ("micro_batch", "lr_base", "lr_base_batch", "eps"):
            if getattr(self, name) is not None:
                _positive(f"{key}.{name}", getattr(self, name))
        if self.warmup_steps < 0 or self.warmup_steps > self.steps:
            raise ConfigError(f"{key}.warmup_steps: {self.warmup_steps} must be in [0, steps={self.steps}]")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{key}.betas: {self.betas} must each be in [0, 1)")
        _non_negative(f"{key}.weight_decay", self.weight_decay)
        if not self.force_optimizer_range and (self.peak_lr > MAX_SANE or self.weight_decay > MAX_SANE):
            what = (f"peak LR {self.peak_lr:g} (lr_base {self.lr_base:g} x global_batch {self.global_batch} / "
                    f"lr_base_batch {self.lr_base_batch})" if self.peak_lr > MAX_SANE else f"weight_decay {self.weight_decay:g}")
            raise ConfigError(f"{key}: {what} is above {MAX_SANE:g}, where training diverges; set "
                              f"{key}.force_optimizer_range=true to run it anyway")
        self._validate_sources(key)
        self.augment.validate(f"{key}.augment")

    def _validate_reductions(self, key: str, patch: int) -> None:
        """The token-length reductions of both towers, by their owning modules."""
        from clipav2.reduce import image, text
        from clipav2.text import TOKENIZER_MODES

        grid = self.image_size // patch
        _owned(key, image.check, self.image_reduction, (grid, grid), self.image_mask_ratio, self.grid_window)
        if self.text_len < 2:
            raise ConfigError(f"{key}.text_len: {self.text_len} must be >= 2 ([CLS] plus one piece)")
        _check_choice(f"{key}.tokenizer_mode", self.tokenizer_mode, TOKENIZER_MODES)
        _owned(key, text.get, self.text_reduction)
        if self.text_reduction not in text.supported(self.tokenizer_mode):
            raise ConfigError(f"{key}.text_reduction: {self.text_reduction!r} is not available with tokenizer_mode "
                              f"{self.tokenizer_mode} ({', '.join(text.supported(self.tokenizer_mode))})")

    def _validate_sources(self, key: str) -> None:
        from clipav2.data.transforms import EVAL_KINDS
        from clipav2.train.decay import RULES

        _check_choice(f"{key}.weight_decay_rule", self.weight_decay_rule, RULES)
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"{key}.grad_clip: {self.grad_clip} must be > 0 (or null for none)")
        _check_choice(f"{key}.eval_transform", self.eval_transform, EVAL_KINDS)
        if self.pos_embed not in (None, "learned"):
            raise ConfigError(f"{key}.pos_embed: {self.pos_embed!r} must be learned or left out")
        if self.init_from is not None and not Path(self.init_from).exists():
            raise ConfigError(f"{key}.init_from: no such file {self.init_from!r}")


SECTIONS = ("model", "data", "parallel", "checkpoint", "log", "eval", "faults", "cost")


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

    def validate(self, world_size: int | None = None) -> Config:
        """Every section checks itself; then what spans sections: the stages against the model,
        and, when the launcher's world size is known, against the world."""
        from clipav2.models.arch import ARCHITECTURES

        for name in SECTIONS:
            getattr(self, name).validate(name)
        if world_size is not None:
            self.parallel.validate_world("parallel", world_size)
        if not self.stages:
            raise ConfigError("stages: a recipe needs at least one stage")
        arch = ARCHITECTURES[self.model.name]
        patch = arch.vision.patch_size
        seen = set()
        for i, s in enumerate(self.stages):
            s.validate(f"stages.{s.name}" if s.name else f"stages[{i}]", self.model.name, patch)
            _check_fits_memory(f"stages.{s.name}", s, arch, self.micro_batch_of(s, world_size or 1))
            if s.name in seen:
                raise ConfigError(f"stages.{s.name}.name: duplicate stage name")
            seen.add(s.name)
            if world_size is not None:
                self._check_split(s, world_size)
        if self.parallel.strategy == "deepspeed" and self.parallel.deepspeed_config:
            check_deepspeed_json(self, world_size or 1)
        return self

    def micro_batch_setting(self, stage: StageConfig) -> int | str:
        """The stage's micro-batch as configured: its own, else parallel.micro_batch (maybe "auto")."""
        return stage.micro_batch or self.parallel.micro_batch

    def micro_batch_of(self, stage: StageConfig, world_size: int) -> int:
        """The configured micro-batch per rank; `auto` not yet fitted to the device
        (clipav2.parallel.micro_batch) is the whole per-rank batch."""
        micro = self.micro_batch_setting(stage)
        return max(1, stage.global_batch // world_size) if micro == "auto" else micro

    def batch_split(self, stage: StageConfig, world_size: int, micro: int | None = None) -> tuple[int, int]:
        """(micro-batch per rank, micro-steps per optimizer step) of `stage` on `world_size` ranks,
        at `micro` or the configured micro-batch. `validate(world_size)` checks that they make up
        the global batch."""
        micro = micro or self.micro_batch_of(stage, world_size)
        return micro, self.parallel.grad_accum or max(1, stage.global_batch // (world_size * micro))

    def _check_split(self, stage: StageConfig, world_size: int) -> None:
        micro, accum = self.batch_split(stage, world_size)
        if world_size * micro * accum == stage.global_batch:
            return
        key = f"stages.{stage.name}.global_batch"
        if self.parallel.grad_accum is None:
            raise ConfigError(f"{key}: {stage.global_batch} is not divisible by world size {world_size} x micro_batch {micro}")
        raise ConfigError(f"{key}: {stage.global_batch} != world size {world_size} x micro_batch {micro} x grad_accum {accum}")


# ---------------------------------------------------------------- building from plain data


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _as_float(value, key: str) -> float:
    if isinstance(value, str):  # PyYAML reads 8e-6 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {_short(value)}")
    if not math.isfinite(value):  # NaN passes every range check, inf breaks the schedule
        raise ConfigError(f"{key}: {_short(value)} is not a finite number")
    return float(value)


def _as_int(value, key: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {_short(value)}")
    if not -MAX_INT < value < MAX_INT:
        raise ConfigError(f"{key}: an integer of {len(str(abs(value)))} digits is out of range (at most 2**63 - 1)")
    return value


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def _short(value) -> str:
    """A value's repr for an error line, cut short (a recipe's value may be huge)."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_bool(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {_short(value)}")
    return value


def _as_str(value, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {_short(value)}")
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
            raise ConfigError(f"{key}: expected a list of {len(args)} numbers, got {_short(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        (arg,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {_short(value)}")
        names = [v.get("name") if isinstance(v, dict) else None for v in value]
        return [_coerce(v, arg, f"{key}.{n}" if n else f"{key}[{i}]") for i, (v, n) in enumerate(zip(value, names))]
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _build(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {_short(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields, key=str)  # keys may be numbers, null, dates
    if unknown:
        where = f"{prefix}." if prefix else ""
        name = unknown[0] if isinstance(unknown[0], str) and unknown[0].isidentifier() else _short(unknown[0])
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
        raise ConfigError(f"override {_short(item.splitlines()[0])}...: a value must be one line")
    return parse_yaml(text, f"override {_short(item)}") if text.strip() else ""


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
    from clipav2.inherit import apply_stage_defaults, read_recipe

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
