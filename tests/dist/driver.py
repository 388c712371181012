"""Train the `tiny` CLIP for a few steps on synthetic deterministic data through a TrainStep (the
engine and the step's own state), the way the training loop does, and record what the tests
compare. Launched 1-process (python),
under `torchrun --nproc_per_node 2`, or as 2 processes with SLURM-style variables.

Step s, micro-step m, rank r reads the global samples
    s*G + m*(G/n_micro) + r*micro ... + micro
so any (world, micro, accumulation) split of the same global batch sees the same data.

Writes to --out: losses.json (rank 0: per-step loss/lr/grad norm/skipped), final.safetensors
(consolidated fp32, rank 0), checkpoints/ (with --ckpt-every).

Several jobs run one after the other in one launch (`JOB_ARGS --then JOB_ARGS ...`, sharing the
process group) to save start-up time; a job that exits (preemption, divergence, a kill) must be
the launch's last. As the training loop does, step results stay on the device and are read every
--log-every steps (and before a checkpoint); with --no-sync the step runs under
`forbid_host_sync()`.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import gc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: nosync

import torch
from safetensors.torch import save_file

import clipav2
from clipav2.config import load_config
from clipav2.loss import clip_loss
from clipav2.parallel import init_distributed
from clipav2.stage import resolve
from nosync import forbid_host_sync
from clipav2.rng import rng_state, set_rng_state
from clipav2.train.checkpoint import CheckpointManager
from clipav2.signals import install_signal_handlers
from clipav2.train.faults import FaultMonitor
from clipav2.train.step import TrainStep, to_host

GLOBAL_BATCH = 16


def parse(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--strategy", default="single")
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--micro", type=int, default=GLOBAL_BATCH)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ckpt-every", type=int, default=10**6)
    ap.add_argument("--nan-step", default="-1", help="rank 0's loss is NaN at this 0-based step (or steps A-B)")
    ap.add_argument("--kill-step", type=int, default=-1, help="rank 0 SIGKILLs itself mid-step")
    ap.add_argument("--usr1-step", type=int, default=-1, help="the last rank sends itself SIGUSR1 mid-step")
    ap.add_argument("--crash-step", type=int, default=-1, help="the last rank exits abruptly")
    ap.add_argument("--max-skips", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=5, help="read step results and skip counters every N steps")
    ap.add_argument("--no-sync", action="store_true", help="fail if the step reads a tensor on the host")
    ap.add_argument("--timeout-minutes", type=float, default=10.0)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    return ap.parse_args(argv)


def jobs(argv):
    """`A --then B --then C` -> [A, B, C], each parsed on its own."""
    parts, current = [], []
    for arg in argv:
        if arg == "--then":
            parts.append(current)
            current = []
        else:
            current.append(arg)
    return [parse(p) for p in [*parts, current]]


def data(n):
    g = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(1, 32000, (n, 16), generator=g)


def run(a):
    lo, _, hi = a.nan_step.partition("-") if not a.nan_step.startswith("-") else ("-1", "", "")
    nan_steps = range(int(lo), int(hi or lo) + 1)
    overrides = [
        f"parallel.strategy={a.strategy}",
        f"parallel.zero_stage={a.zero}",
        f"parallel.micro_batch={a.micro}",
        f"parallel.timeout_minutes={a.timeout_minutes}",
        "parallel.precision=fp32",
        f"faults.max_consecutive_skips={a.max_skips}",
        f"run_dir={a.out}",
        "stages=[{name: pretrain}]",
        f"stages.pretrain.samples={a.steps * GLOBAL_BATCH}",
        f"stages.pretrain.global_batch={GLOBAL_BATCH}",
        "stages.pretrain.image_size=32",
        "stages.pretrain.text_len=16",
        "stages.pretrain.lr_base=2e-3",
        "stages.pretrain.lr_base_batch=16",
        "stages.pretrain.warmup_steps=2",
        *a.set,
    ]
    cfg = load_config(None, overrides)
    world = init_distributed(cfg.parallel)
    cfg.validate(world.world_size)
    torch.manual_seed(0)
    strategy = TrainStep(cfg, resolve(cfg, 0, world.world_size), world, clipav2.create_model("tiny"))
    n_micro = strategy.stage.grad_accum
    images, ids = data(a.steps * GLOBAL_BATCH)
    ckpt = CheckpointManager(Path(a.out) / "checkpoints", a.ckpt_every, 10**6, 2, world)
    monitor = FaultMonitor(cfg.faults.max_consecutive_skips, world)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    log_path = Path(a.out) / "losses.json"
    start, log = 0, []
    extra = ckpt.resume(strategy)
    if extra is not None:
        start, log = extra["step"], extra["log"]
        set_rng_state(extra["rng"])
    last = world.world_size - 1
    pending = []  # this interval's step results, still on the device

    def flush():
        log.extend({"loss": r.loss, "lr": r.lr, "grad_norm": r.grad_norm, "skipped": r.skipped} for r in to_host(pending))
        pending.clear()

    for step in range(start, a.steps):
        if step == a.kill_step and world.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == a.usr1_step and world.rank == last:
            os.kill(os.getpid(), signal.SIGUSR1)
        if step == a.crash_step and world.rank == last:
            os._exit(3)
        inputs = []
        for m in range(n_micro):
            lo = step * GLOBAL_BATCH + m * (GLOBAL_BATCH // n_micro) + world.rank * a.micro
            inputs.append((images[lo : lo + a.micro].to(world.device), ids[lo : lo + a.micro].to(world.device), None))

        def loss_fn(*args):
            loss = clip_loss(*args)
            return loss * float("nan") if step in nan_steps and world.rank == 0 else loss

        with forbid_host_sync() if a.no_sync else contextlib.nullcontext():
            pending.append(strategy(inputs, loss_fn)[0])
        log_step = (step + 1) % a.log_every == 0 or step + 1 == a.steps
        skips = strategy.skips.read() if log_step else None
        code = monitor.after_step(step + 1, pending[-1], skips)
        due = code is not None or ckpt.due(step + 1)
        if log_step or due:
            flush()
        if due:
            ckpt.save(strategy, step + 1, {"step": step + 1, "log": log, "rng": rng_state()})
        if code is not None:
            print(monitor.message, flush=True)
            sys.exit(code)
    if world.is_main:
        log_path.write_text(json.dumps(log))
    weights = strategy.engine.full_state_dict()
    if world.is_main:
        save_file({k: v.contiguous() for k, v in weights.items()}, str(Path(a.out) / "final.safetensors"))
    if world.distributed:
        torch.distributed.barrier()
    sys.stdout.write(f"[job done: {a.out}]\n")  # one write: ranks share the pipe
    sys.stdout.flush()


def main():
    install_signal_handlers()  # once for the launch, as the loop does for a run
    for a in jobs(sys.argv[1:]):
        run(a)
        gc.collect()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
