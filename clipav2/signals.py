"""The run's signals, routed to one process-wide flag that the training loop reads after every
step (clipav2.train.faults).

- SIGTERM (scancel, SLURM preemption, `timeout`, docker stop, Kubernetes), SIGUSR1 (SLURM's
  preemption warning) and SIGHUP (a closed terminal or ssh session) only set the flag; so does a
  first Ctrl-C (SIGINT) under `clipav2 train` (a second one aborts at once). `run_signal_handlers()`
  installs the handler for the whole run and restores the previous handlers when the run ends, so
  a process that goes on after `train()` (a test suite, a notebook, a sweep) gets its Ctrl-C back.
- Launchers send these signals to every process of the job, data loader workers included. A
  worker ignores them (`quiet_worker`, the loaders' worker_init_fn) and leaves them to the
  trainer, which stops its workers itself; `start_workers` holds the signals while workers are
  forked, so none arrives in a worker before it ignores it.
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal
import sys
from contextlib import contextmanager

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
    own handler, registered earlier), e.g. an evaluation loader's left by an error. torch's SIGCHLD
    handler, which would call a killed worker an error, is set aside: the run is over."""
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
