"""Fault handling the loop consults after every step.

- SIGTERM / SIGUSR1 (SLURM's preemption warning) only set a flag; after the current step the
  ranks agree (any rank signalled -> all stop), the loop checkpoints and exits PREEMPTED, which
  the launch scripts requeue.
- `max_consecutive_skips` non-finite steps in a row -> checkpoint and exit DIVERGED, naming the step.
- A crashed rank: the collective timeout (`parallel.timeout_minutes`, see parallel/env.py) makes
  the others fail instead of hanging.

    monitor = FaultMonitor(cfg.faults.max_consecutive_skips, world)
    ...
    code = monitor.after_step(step, result)
    if code is not None:
        ckpt.save(strategy, step, extra); print(monitor.message); sys.exit(code)
"""
from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from clipav2 import exitcodes

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class FaultMonitor:
    def __init__(self, max_consecutive_skips: int, world=None, signals=PREEMPT_SIGNALS):
        self.max_consecutive_skips = max_consecutive_skips
        self.world = world
        self.consecutive_skips = 0
        self.signal_received = None
        self.message = ""
        for sig in signals:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.signal_received = signal.Signals(signum).name

    def _preempted_anywhere(self) -> bool:
        flag = self.signal_received is not None
        if self.world is None or not self.world.distributed:
            return flag
        t = torch.tensor([float(flag)], device=self.world.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def after_step(self, step: int, result) -> int | None:
        """The exit code to stop with after checkpointing (PREEMPTED / DIVERGED), or None to go on.
        `step` is the 1-based number of the step just finished. Collective: every rank calls it."""
        self.consecutive_skips = self.consecutive_skips + 1 if result.skipped else 0
        preempted = self._preempted_anywhere()
        if self.consecutive_skips >= self.max_consecutive_skips:
            self.message = (
                f"diverged: {self.consecutive_skips} consecutive non-finite steps ending at step {step} "
                f"(loss {result.loss}, grad norm {result.grad_norm}); checkpoint written, exit {exitcodes.DIVERGED}"
            )
            return exitcodes.DIVERGED
        if preempted:
            who = self.signal_received or "a signal on another rank"
            self.message = f"preempted by {who} after step {step}; checkpoint written, exit {exitcodes.PREEMPTED} (requeue)"
            return exitcodes.PREEMPTED
        return None
