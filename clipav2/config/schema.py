"""The run configuration's schema: one dataclass per section, each checking itself, and `Config`,
which checks what spans sections (stages against the model, the batch split against the world).
A recipe is data: a model name plus an ordered list of stages. Loading it (YAML, overrides,
inheritance) is `clipav2.config.load`.

Every error is a `ConfigError` whose message names the key and the allowed values.
"""
from __future__ import annotations

import os
import reprlib
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A bad configuration: the message is one line naming the key (whitespace a key or value
    brought in, newlines included, is folded so it stays one line)."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80


def short_repr(value) -> str:
    """A value's repr for an error line, cut short (a recipe's value may be huge)."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {short_repr(value)} is not one of {', '.join(map(str, allowed))}")


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
        from clipav2.parallel.deepspeed_engine import ZERO_STAGES

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
    gpu: str = "auto"  # auto (from the device name) | a key of clipav2.accelerators
    price_per_gpu_hour: typing.Optional[float] = None
    budget_usd: typing.Optional[float] = None
    stop_fraction: float = 1.0

    def validate(self, key: str) -> None:
        from clipav2.accelerators import PriceError, get_accelerator

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
    weight_decay_rule: str = "kernels"  # kernels | kernels_and_tokens | matrices (clipav2.decay)
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
        from clipav2.decay import RULES

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
        (clipav2.micro_batch) is the whole per-rank batch."""
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

