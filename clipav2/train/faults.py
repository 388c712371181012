"""Fault handling the loop consults after every step.

- A preemption signal (SIGTERM, SIGUSR1, SIGHUP; a first Ctrl-C under `clipav2 train`) sets a
  process-wide flag (clipav2.signals). The flag outlives any one FaultMonitor, so a signal that
  arrives between two stages is honoured at the next step of the next stage. After each step the
  ranks agree (any rank signalled -> all stop) over a host-side gloo group, so the agreement never
  waits on the GPU; the loop checkpoints and exits PREEMPTED (INTERRUPTED for Ctrl-C), which the
  launch scripts requeue.
- `max_consecutive_skips` non-finite steps in a row -> checkpoint and exit DIVERGED, naming the
  run's first and last step. The skip counters live on the device (`TrainStep.skips`); the loop
  reads them at log steps and passes the report, so divergence is noticed up to one log interval
  late (the counters keep the longest run since the previous read: no run is missed).
- A stage that ends on non-finite or exploded weights, or a non-finite last loss (`diverged`),
  exits DIVERGED without its weights file.
- A crashed rank: the collective timeout (`parallel.timeout_minutes`, see parallel/env.py) makes
  the others fail instead of hanging.

    with run_signal_handlers():                         # once, around the whole run
    monitor = FaultMonitor(cfg.faults.max_consecutive_skips, world)
    ...
    code = monitor.after_step(step, result, train_step.skips.read() if log_step else None)
    if code is not None:
        ckpt.save(train_step, step, extra); print(monitor.message); sys.exit(code)
"""
from __future__ import annotations

import torch

from clipav2 import exitcodes
from clipav2.parallel.env import any_rank
from clipav2.signals import PREEMPT_SIGNALS, clear_signal, install_signal_handlers, signal_received


class FaultMonitor:
    def __init__(self, max_consecutive_skips: int, world=None, signals=PREEMPT_SIGNALS):
        self.max_consecutive_skips = max_consecutive_skips
        self.world = world
        self.consecutive_skips = 0  # only for results read on the host every step
        self.run_first_step = 0
        self.message = ""
        install_signal_handlers(signals)

    @property
    def signal_received(self) -> str | None:
        return signal_received()

    def _preempted_anywhere(self) -> bool:
        return any_rank(self.world, signal_received() is not None)

    def _longest_run(self, step: int, result, skips) -> tuple[int, int]:
        """(length, first step) of the longest run of consecutive skips known at `step`."""
        run = (0, 0)
        if result is not None and not isinstance(result.skipped, torch.Tensor):  # a host value (DeepSpeed, tests)
            self.consecutive_skips = self.consecutive_skips + 1 if result.skipped else 0
            self.run_first_step = step if self.consecutive_skips == 1 else self.run_first_step
            run = (self.consecutive_skips, self.run_first_step)
        # a device flag is never read here: the counters report it at the next log step
        if skips is not None and skips.longest_run > run[0]:
            run = (skips.longest_run, skips.longest_run_first_step)
        return run

    def after_step(self, step: int, result=None, skips=None) -> int | None:
        """The exit code to stop with after checkpointing (PREEMPTED / DIVERGED), or None to go on.
        `step` is the 1-based number of the step just finished; `result` its StepResult; `skips`
        the strategy's `SkipReport` when the loop read it at this (log) step. A result whose
        `skipped` is a device tensor is not read (no sync): its skip is counted from the next
        report. A host result is counted at once. Collective: every rank calls it every step
        (a host-side round trip, no device sync)."""
        run, first = self._longest_run(step, result, skips)
        preempted = self._preempted_anywhere()
        if run >= self.max_consecutive_skips:
            last = first + run - 1
            seen = f" (seen at step {step}: skips are read every log interval)" if last != step else ""
            self.message = (
                f"diverged: {run} consecutive non-finite steps starting at step {first}, ending at step {last}{seen} "
                f"(limit {self.max_consecutive_skips}); checkpoint written, exit {exitcodes.DIVERGED}"
            )
            return exitcodes.DIVERGED
        if preempted:
            who = signal_received() or "a signal on another rank"
            clear_signal()  # acted on: the process checkpoints and exits
            if who == "SIGINT":
                self.message = f"interrupted by SIGINT (Ctrl-C) after step {step}; checkpoint written, exit {exitcodes.INTERRUPTED}"
                return exitcodes.INTERRUPTED
            self.message = f"preempted by {who} after step {step}; checkpoint written, exit {exitcodes.PREEMPTED} (requeue)"
            return exitcodes.PREEMPTED
        return None


def nonfinite_weights(state: dict) -> str | None:
    """None if every floating tensor of `state` is finite, else which are not (a stage ending
    like this must not write its weights: the next stage would start from them)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not bad:
        return None
    return f"{len(bad)} of {len(state)} tensors are not finite, e.g. {bad[0]}"


MAX_ABS_WEIGHT = 1e6  # trained CLIP weights are O(1); an LR of 1e30 leaves them near 1e29


def diverged(state: dict, last_loss: float) -> str | None:
    """Why a stage's final weights are not a result (None if they are): a non-finite tensor, a
    tensor beyond MAX_ABS_WEIGHT, or a non-finite last logged loss."""
    import math

    bad = nonfinite_weights(state)
    if bad:
        return f"the final weights are not finite ({bad})"
    big = {k: float(v.abs().max()) for k, v in state.items() if v.is_floating_point() and v.numel()}
    big = {k: v for k, v in big.items() if v > MAX_ABS_WEIGHT}
    if big:
        worst = max(big, key=big.get)
        return (f"the final weights exploded ({len(big)} of {len(state)} tensors beyond {MAX_ABS_WEIGHT:g}, "
                f"e.g. {worst} up to {big[worst]:.3g})")
    if not math.isfinite(last_loss):
        return f"the last logged loss is {last_loss}"
    return None
