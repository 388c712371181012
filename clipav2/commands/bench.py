"""`clipav2 bench CONFIG [key=value ...] --stage NAME`: time a stage's training step (samples/s,
samples/s/GPU, TFLOP/s, MFU, peak memory, data wait) on synthetic on-device inputs or, with
`--data`, the real loader; `--baseline open_clip` times open_clip's step at the same shapes.

    clipav2 bench configs/h14.yaml --stage pretrain --micro-batch 512 --compile --baseline open_clip
    torchrun --nproc_per_node 8 -m clipav2 bench configs/bigg14.yaml --stage pretrain --strategy fsdp \\
        --checkpointing every_2 --micro-batch auto
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from clipav2 import exitcodes
from clipav2.config import ConfigError
from clipav2.parallel import STRATEGIES
from clipav2.models.arch import ATTENTION_BACKENDS


def add_arguments(parser) -> None:
    parser.add_argument("config", help="a recipe YAML, e.g. configs/h14.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. parallel.bf16_momentum=true")
    parser.add_argument("--stage", help="the stage to time (default: the first)")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first: compilation, autotuning (default 3)")
    parser.add_argument("--micro-batch", help="per-GPU micro-batch, or 'auto': the largest that fits (short search)")
    parser.add_argument("--search-max", type=int, default=4096, help="upper end of the --micro-batch auto search")
    parser.add_argument("--search-probes", type=int, default=8, help="most micro-batches the auto search tries (each builds the model)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-steps per timed optimizer step (default 1)")
    parser.add_argument("--strategy", choices=STRATEGIES, help="override parallel.strategy")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile each transformer block (default: on CUDA only)")
    parser.add_argument("--attention", choices=ATTENTION_BACKENDS, help="override model.attention")
    parser.add_argument("--checkpointing", help="override model.checkpointing: none, all, every_<k>")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when there is one")
    parser.add_argument("--data", action="store_true", help="read the real training shards (data.train)")
    parser.add_argument("--baseline", choices=("open_clip",), help="also time open_clip's step at the same shapes")
    parser.add_argument("--peak-tflops", type=float, help="the chip's dense bf16 peak, for a chip not in the table")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")


def _check_args(args) -> None:
    for name in ("steps", "grad_accum", "search_max", "search_probes"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup: must be >= 0, got {args.warmup}")
    mb = args.micro_batch
    if mb is not None and mb != "auto" and not (mb.isdigit() and int(mb) >= 1):
        raise ConfigError(f"--micro-batch: expected a positive integer or 'auto', got {mb!r}")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise ConfigError(f"--peak-tflops: must be > 0, got {args.peak_tflops}")


def _demo_data(path, overrides) -> list[str]:
    """A `data.demo` recipe reads the set its first `clipav2 train` generated into RUN_DIR/demo_data."""
    from pathlib import Path

    from clipav2.config import load_config

    cfg = load_config(path, overrides)
    if not cfg.data.demo or cfg.data.train:
        return []
    root = Path(cfg.run_dir) / "demo_data"
    if not (root / "train").is_dir():
        raise ConfigError(f"--data: the demo data set is not in {root} yet; write it with `clipav2 data demo {root}` "
                          f"(or run `clipav2 train {path}` once)")
    return [f"data.train={root / 'train'}"]


def main(args) -> int:
    from clipav2.commands.train import launcher_world_size

    try:
        _check_args(args)
        if args.device == "cpu":
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch first touches CUDA
        from clipav2.perf.bench import BenchOptions, load_bench_config

        opts = BenchOptions(steps=args.steps, warmup=args.warmup, grad_accum=args.grad_accum, data=args.data,
                            baseline=args.baseline, peak_tflops=args.peak_tflops, search_max=args.search_max,
                            search_probes=args.search_probes)
        flags = dict(strategy=args.strategy, compile=args.compile, attention=args.attention,
                     checkpointing=args.checkpointing)
        micro = None if args.micro_batch in (None, "auto") else int(args.micro_batch)
        world_size = launcher_world_size()
        overrides = list(args.overrides) + (_demo_data(args.config, args.overrides) if args.data else [])
        cfg, stage = load_bench_config(args.config, overrides, args.stage, flags, micro, opts, world_size)
    except ConfigError as e:
        print(f"clipav2 bench: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("clipav2 bench: --device cuda: no CUDA device is visible", file=sys.stderr)
        return exitcodes.CONFIG
    from clipav2.perf.bench import run_bench
    from clipav2.perf.result import table

    rows, world = run_bench(args.config, overrides, cfg, stage, flags, opts, auto_batch=args.micro_batch == "auto")
    if world.is_main:
        print(json.dumps([r.as_dict() for r in rows], indent=1) if args.json else table(rows))
    return 0 if all(r.error is None or r.trainer != "clipav2" for r in rows) else 1
