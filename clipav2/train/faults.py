"""Fault handling the loop consults after every step.

- SIGTERM (scancel, SLURM preemption, `timeout`, docker stop, Kubernetes), SIGUSR1 (SLURM's
  preemption warning) and SIGHUP (a closed terminal or ssh session) only set a process-wide flag;
  so does a first Ctrl-C (SIGINT) under `clipav2 train` (exit INTERRUPTED after the checkpoint; a
  second one aborts at once). `run_signal_handlers()` installs the handler for the whole run
  (before the first stage) and restores the previous handlers when the run ends, so a process
  that goes on after `train()` (a test suite, a notebook, a sweep) gets its Ctrl-C back. The flag
  outlives any one FaultMonitor, so a signal that arrives between two stages is honoured at the
  next step of the next stage.
- Launchers send these signals to every process of the job, data loader workers included. A
  worker ignores them (`quiet_worker`, the loaders' worker_init_fn) and leaves them to the
  trainer, which stops its workers itself; `start_workers` holds the signals while workers are
  forked, so none arrives in a worker before it ignores it. After each step the ranks agree (any rank signalled -> all
  stop) over a host-side gloo group, so the agreement never waits on the GPU; the loop
  checkpoints and exits PREEMPTED, which the launch scripts requeue.
- `max_consecutive_skips` non-finite steps in a row -> checkpoint and exit DIVERGED, naming the
  run's first and last step. The skip counters live on the device (`strategy.skips`); the loop
  reads them at log steps and passes the report, so divergence is noticed up to one log interval
  late (the counters keep the longest run since the previous read: no run is missed).
- A crashed rank: the collective timeout (`parallel.timeout_minutes`, see parallel/env.py) makes
  the others fail instead of hanging.

    with run_signal_handlers():                         # once, around the whole run
    monitor = FaultMonitor(cfg.faults.max_consecutive_skips, world)
    ...
    code = monitor.after_step(step, result, strategy.skips.read() if log_step else None)
    if code is not None:
        ckpt.save(strategy, step, extra); print(monitor.message); sys.exit(code)
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import sys
from contextlib import contextmanager

import torch

from clipav2 import exitcodes
from clipav2.parallel.env import any_rank

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
RUN_SIGNALS = PREEMPT_SIGNALS + (signal.SIGINT,)  # what `clipav2 train` routes: Ctrl-C checkpoints too
_received: str | None = None  # the first preemption signal this process got and has not acted on
_interrupts = 0  # Ctrl-Cs so far: the second aborts at once
_kill_at_exit = None  # the atexit hook that stops quiet workers, once registered


def _on_signal(signum, frame) -> None:
    global _received, _interrupts
    if signum == signal.SIGINT:
        _interrupts += 1
        if _interrupts > 1:
            raise KeyboardInterrupt  # the second Ctrl-C: abort now, without a checkpoint
        print("SIGINT: finishing this step, writing a checkpoint, then stopping (Ctrl-C again aborts at once)",
              file=sys.stderr, flush=True)
    _received = _received or signal.Signals(signum).name


def install_signal_handlers(signals=PREEMPT_SIGNALS) -> dict:
    """Route `signals` to the process-wide preemption flag (idempotent; keeps a pending flag).
    Returns the handlers it replaced, for `restore_signal_handlers`."""
    previous = {}
    for sig in signals:
        if signal.getsignal(sig) is not _on_signal:
            previous[sig] = signal.signal(sig, _on_signal)
    return previous


def restore_signal_handlers(previous: dict) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def run_signal_handlers(signals=RUN_SIGNALS):
    """The run's handlers for its duration; the previous ones (and a fresh Ctrl-C count) after it,
    whether it returns or raises. A signal received but not acted on is dropped with the run."""
    global _interrupts
    _interrupts = 0
    previous = install_signal_handlers(signals)
    try:
        yield
    finally:
        restore_signal_handlers(previous)
        _interrupts = 0
        clear_signal()


def quiet_worker(worker_id: int | None = None) -> None:
    """A data loader worker's init: ignore the run's signals (a launcher sends them to the whole
    process group; torch's own worker handler would die of SIGTERM and abort the trainer) and
    take those held while it was forked. The trainer stops its workers itself."""
    for sig in RUN_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RUN_SIGNALS)


def _kill_workers_left() -> None:
    """At exit multiprocessing stops daemonic children with SIGTERM and waits for them, which a
    quiet worker ignores: SIGKILL those still alive first (atexit runs this before multiprocessing's
    own handler, registered earlier). torch's SIGCHLD handler, which would call a killed worker an
    error, is set aside: the run is over."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def start_workers(loader):
    """iter(loader), with the run's signals held while its workers are forked: a signal sent to
    the group then reaches the trainer once they are up, and a worker only after it ignores it."""
    global _kill_at_exit
    if not _kill_at_exit:
        _kill_at_exit = atexit.register(_kill_workers_left)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def signal_received() -> str | None:
    return _received


def clear_signal() -> None:
    global _received
    _received = None


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
        return _received

    def _preempted_anywhere(self) -> bool:
        return any_rank(self.world, _received is not None)

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
            who = _received or "a signal on another rank"
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
