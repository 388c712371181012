"""`clipav2 train`, the command users run (clipav2.cli -> clipav2.train.loop.Trainer), with two
things the engine tests need put in and nothing else changed:

* data in global order: at step s, micro-step m, rank r reads the global samples
  s*G + m*(G/n) + r*micro ... + micro (G the global batch, n the micro-steps), each sample drawn
  from a generator seeded with its index, so every (world size, micro-batch, accumulation) split
  of the same global batch trains on the same data. The real loader gives each rank its own
  shards and streams; its exact resume is tested on its own (test_train_resume, test_data_*).
* faults, by 0-based step: `--nan-step 3` or `3-5` (rank 0's loss is NaN), `--kill-step K` (rank 0
  SIGKILLs itself), `--usr1-step K` (the last rank sends itself SIGUSR1), `--crash-step K` (the
  last rank exits at once); `--no-sync` runs every step under tests/nosync.py's
  forbid_host_sync; `--gather-at-save` writes what the live engine gathers (`full_state_dict`)
  after each checkpoint to RUN_DIR/gathered/step_N.safetensors.

    train.py [FAULTS] RECIPE [key=value ...] [--then [FAULTS] RECIPE [key=value ...] ...]

Runs given with --then follow one another in one launch, sharing the process group (start-up is
most of a tiny run's time); a run that ends the process (a kill, a crash, a non-zero exit) comes
last. Each finished run prints "[run done: RUN_DIR]".
"""
import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: nosync

import torch

import clipav2.data
import clipav2.data.loader
from clipav2 import cli
from clipav2.loss import clip_loss
from clipav2.train.checkpoint import CheckpointManager
from clipav2.train.step import TrainStep
from nosync import forbid_host_sync


def parse(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--nan-step", default="", help="A or A-B: rank 0's loss is NaN at these 0-based steps")
    for flag in ("--kill-step", "--usr1-step", "--crash-step"):
        ap.add_argument(flag, type=int, default=-1)
    ap.add_argument("--no-sync", action="store_true")
    ap.add_argument("--gather-at-save", action="store_true")
    faults, train_args = ap.parse_known_args(argv)
    lo, _, hi = faults.nan_step.partition("-")
    faults.nan_steps = range(int(lo), int(hi or lo) + 1) if lo else range(0)
    return faults, train_args


def runs(argv):
    """`A --then B` -> [parse(A), parse(B)]."""
    parts, current = [], []
    for arg in argv:
        if arg == "--then":
            parts.append(current)
            current = []
        else:
            current.append(arg)
    return [parse(p) for p in [*parts, current]]


def sample(index: int, stage):
    """Global sample `index` at the stage's shapes: a uint8 image and token ids, the same in every process."""
    g = torch.Generator().manual_seed(index)
    image = torch.randint(0, 256, (3, stage.image_size, stage.image_size), generator=g, dtype=torch.uint8)
    return image, torch.randint(1, stage.arch.text.vocab_size, (stage.text_len,), generator=g)


class GlobalOrder:
    """What the loop asks of its loader (clipav2.data.loader.TrainLoader), over the global order."""

    def __init__(self, cfg, stage, world, text_transform=None, state=None):
        self.stage, self.rank, self.delivered = stage, world.rank, 0  # micro-batches given out
        self.skipped = {}
        if state is not None:
            self.load_state_dict(state)

    def __iter__(self):
        s = self.stage
        while True:
            step, m = divmod(self.delivered, s.grad_accum)
            lo = step * s.global_batch + m * (s.global_batch // s.grad_accum) + self.rank * s.micro_batch
            images, ids = zip(*(sample(i, s) for i in range(lo, lo + s.micro_batch)))
            self.delivered += 1
            yield {"images": torch.stack(images), "text": torch.stack(ids), "keys": [str(i) for i in range(lo, lo + s.micro_batch)]}

    def state_dict(self):
        return {"step": self.delivered // self.stage.grad_accum}  # checkpoints fall between steps

    def load_state_dict(self, state):
        self.delivered = state["step"] * self.stage.grad_accum

    def close(self):
        pass


def inject(faults):
    """Put this run's faults into the step (TrainStep.__call__) and the checkpoint save."""
    call, save = TrainStep.__call__, CheckpointManager.save

    def faulty_call(self, inputs, loss_fn=clip_loss, before_update=None):
        step, rank, last = self.count, self.world.rank, self.world.world_size - 1
        if step == faults.kill_step and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == faults.usr1_step and rank == last:
            os.kill(os.getpid(), signal.SIGUSR1)
        if step == faults.crash_step and rank == last:
            os._exit(3)

        def loss(*args):
            value = loss_fn(*args)
            return value * float("nan") if step in faults.nan_steps and rank == 0 else value

        with forbid_host_sync() if faults.no_sync else contextlib.nullcontext():
            return call(self, inputs, loss, before_update)

    def gathering_save(self, step_state, step, extra):
        path = save(self, step_state, step, extra)
        weights = step_state.engine.full_state_dict()  # collective
        if step_state.world.is_main:
            from safetensors.torch import save_file

            out = self.root.parents[1] / "gathered"  # RUN_DIR/checkpoints/<stage> -> RUN_DIR/gathered
            out.mkdir(exist_ok=True)
            save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"step_{step}.safetensors"))
        return path

    TrainStep.__call__ = faulty_call
    CheckpointManager.save = gathering_save if faults.gather_at_save else save
    return call, save


def main():
    clipav2.data.build_train_loader = GlobalOrder
    clipav2.data.loader.host_memory_note = lambda loader, stage: "data: global order (tests/dist/train.py)"
    jobs = runs(sys.argv[1:])
    join_process_group(jobs[0][1])
    for faults, train_args in jobs:
        run_dir = next(a.split("=", 1)[1] for a in train_args if a.startswith("run_dir="))
        call, save = inject(faults)
        code = cli.main(["train", *train_args])
        TrainStep.__call__, CheckpointManager.save = call, save
        if code != 0:
            sys.exit(code)
        sys.stdout.write(f"[run done: {run_dir}]\n")  # one write: ranks share the pipe
        sys.stdout.flush()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def join_process_group(train_args):
    """Under a launcher, the group is made once for all runs (each `clipav2 train` then leaves it
    standing, as it does a group it did not make)."""
    from clipav2.commands.train import add_arguments
    from clipav2.config import load_config
    from clipav2.launcher import launcher_env
    from clipav2.parallel import init_distributed

    if launcher_env() is not None:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        args = parser.parse_intermixed_args(train_args)
        init_distributed(load_config(args.config, args.overrides).parallel)


if __name__ == "__main__":
    main()
