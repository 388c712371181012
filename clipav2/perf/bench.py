"""The benchmark behind `clipav2 bench`: the stage's config with the benchmark's batch shape,
our step and (optionally) open_clip's on the same inputs, one `Row` each."""
from __future__ import annotations

import platform
from dataclasses import dataclass

import torch

from clipav2.config import load_config
from clipav2.perf import inputs
from clipav2.cost.mfu import peak_tflops
from clipav2.parallel.env import device_name
from clipav2.perf.result import Row
from clipav2.perf.run import measure_row
from clipav2.perf.search import largest_fitting
from clipav2.stage import resolve


@dataclass
class BenchOptions:
    steps: int = 10
    warmup: int = 3
    grad_accum: int = 1
    data: bool = False
    baseline: str | None = None
    peak_tflops: float | None = None
    search_max: int = 4096
    search_probes: int = 8


def flag_overrides(flags: dict) -> list[str]:
    """The command's switches as config overrides, so `clipav2 train` with them runs the same."""
    out = [f"parallel.strategy={flags['strategy']}"] if flags.get("strategy") else []
    out += [f"model.compile={str(flags['compile']).lower()}"] if flags.get("compile") is not None else []
    out += [f"model.attention={flags['attention']}"] if flags.get("attention") else []
    out += [f"model.checkpointing={flags['checkpointing']}"] if flags.get("checkpointing") else []
    return out


def batch_overrides(stage: str, micro: int, opts: BenchOptions, world_size: int) -> list[str]:
    """One timed step = `grad_accum` micro-batches per GPU, then the optimizer step: the stage's
    global batch is set to world x micro x accumulation (other stages keep theirs)."""
    glob = world_size * micro * opts.grad_accum
    s = f"stages.{stage}"
    return ["parallel.grad_accum=null", f"{s}.micro_batch={micro}", f"{s}.global_batch={glob}",
            f"{s}.samples={glob * (opts.warmup + opts.steps + 1)}", f"{s}.warmup_steps=0", f"{s}.init_from=null"]


def load_bench_config(path, overrides, stage_name, flags, micro, opts: BenchOptions, world_size: int):
    """(cfg, stage) for timing `stage_name` (default: the first stage) at micro-batch `micro`
    (default: the stage's, else parallel.micro_batch)."""
    base = list(overrides) + flag_overrides(flags)
    cfg = load_config(path, base)
    stage = cfg.stage(stage_name) if stage_name else cfg.stages[0]
    micro = micro or cfg.micro_batch_of(stage, world_size)
    cfg = load_config(path, base + batch_overrides(stage.name, micro, opts, world_size), world_size=world_size,
                      check_data=opts.data)
    return cfg, resolve(cfg, [s.name for s in cfg.stages].index(stage.name), world_size)


def _row(trainer: str, cfg, stage, world, opts: BenchOptions, flags: dict) -> Row:
    return Row(trainer=trainer, model=cfg.model.name, stage=stage.name, image_size=stage.image_size,
               kept_image_tokens=stage.kept_image_tokens, text_len=stage.text_len,
               device=device_name(world.device), world_size=world.world_size,
               micro_batch=stage.micro_batch, grad_accum=opts.grad_accum,
               steps=opts.steps, warmup=opts.warmup,
               flags={**flags, "torch": torch.__version__, "python": platform.python_version(),
                      "inputs": "loader" if opts.data else "synthetic uint8 on device"},
               train_flops_per_sample=float(stage.train_flops_per_sample),
               peak_tflops=opts.peak_tflops or peak_tflops(device_name(world.device)))


def _batches(cfg, stage, world, opts: BenchOptions):
    if not opts.data:
        return inputs.synthetic_batches(stage.micro_batch, stage.image_size, stage.text_len, stage.arch.text.vocab_size, opts.grad_accum,
                                        world.device, seed=cfg.seed + world.rank)
    from clipav2.data import build_train_loader
    from clipav2.text import make_text_transform

    transform = make_text_transform(stage, cfg.data.vocab, cfg.seed)
    return inputs.loader_batches(build_train_loader(cfg, stage, world, transform), opts.grad_accum, world.device)


def bench_ours(cfg, stage, world, opts: BenchOptions) -> Row:
    from clipav2.parallel.base import resolve_compile, resolve_precision
    from clipav2.perf.ours import our_step

    p, m = cfg.parallel, cfg.model
    flags = dict(precision=resolve_precision(p, world), strategy=p.strategy, compile=resolve_compile(m, world),
                 attention=m.attention, checkpointing=m.checkpointing, zero_stage=p.zero_stage,
                 fused_optimizer=p.fused_optimizer, bf16_momentum=p.bf16_momentum)
    row = _row("clipav2", cfg, stage, world, opts, flags)
    return measure_row(row, lambda: our_step(cfg, stage, world), _batches(cfg, stage, world, opts), world.device)


def bench_open_clip(cfg, stage, world, opts: BenchOptions) -> Row:
    from clipav2.parallel.base import resolve_precision
    from clipav2.perf.baseline import open_clip_step

    if world.world_size > 1:
        raise ValueError("--baseline open_clip runs in one process: launch the benchmark without torchrun")
    precision = resolve_precision(cfg.parallel, world)
    ckpt = cfg.model.checkpointing != "none"  # open_clip can only checkpoint every block
    flags = dict(precision=precision, strategy="single", compile=False, attention="open_clip default",
                 checkpointing="all" if ckpt else "none", optimizer="torch AdamW (foreach)")
    if stage.image_reduction not in ("resize", "random"):
        flags["patch_dropout"] = f"random, keeping {stage.kept_image_tokens} of {stage.n_patches} (open_clip has no {stage.image_reduction})"
    row = _row("open_clip", cfg, stage, world, opts, flags)
    make = lambda: open_clip_step(stage, world.device, ckpt, precision)  # noqa: E731
    return measure_row(row, make, _batches(cfg, stage, world, opts), world.device)


def search_micro_batch(path, overrides, stage_name, flags, opts: BenchOptions, world, start: int) -> int:
    """The largest micro-batch whose step (one warm-up + one timed) does not run out of memory."""
    probe_opts = BenchOptions(steps=1, warmup=1, grad_accum=1, search_max=opts.search_max)

    def fits(micro: int) -> bool:
        cfg, stage = load_bench_config(path, overrides, stage_name, flags, micro, probe_opts, world.world_size)
        return bench_ours(cfg, stage, world, probe_opts).error is None

    return largest_fitting(fits, start, opts.search_max, opts.search_probes, multiple=8 if start >= 8 else 1)


def run_bench(path, overrides, cfg, stage, flags, opts: BenchOptions, auto_batch: bool = False):
    """Rows for our step and the baseline; with `auto_batch`, at the largest micro-batch that fits."""
    from clipav2.parallel import init_distributed

    world = init_distributed(cfg.parallel)
    if auto_batch:
        start = stage.micro_batch
        micro = search_micro_batch(path, overrides, stage.name, flags, opts, world, min(start, opts.search_max))
        cfg, stage = load_bench_config(path, overrides, stage.name, flags, micro, opts, world.world_size)
    rows = [bench_ours(cfg, stage, world, opts)]
    if auto_batch:
        rows[0].flags["micro_batch_search"] = f"largest that fits, <= {opts.search_max}"
    if opts.baseline == "open_clip":
        rows.append(bench_open_clip(cfg, stage, world, opts))
    return rows, world
