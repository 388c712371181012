"""FaultMonitor: a preemption signal stops after the step with PREEMPTED; N consecutive skipped
steps stop with DIVERGED naming the step; a good step resets the count."""
import os
import signal

import pytest

from clipav2 import exitcodes
from clipav2.train.step import StepResult
from clipav2.train.faults import FaultMonitor

GOOD = StepResult(lr=1e-3, grad_norm=1.0, skipped=False, loss=2.0)
BAD = StepResult(lr=1e-3, grad_norm=float("nan"), skipped=True, loss=float("nan"))


@pytest.fixture(autouse=True)
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_stops_after_the_step(sig):
    monitor = FaultMonitor(3)
    assert monitor.after_step(1, GOOD) is None
    os.kill(os.getpid(), sig)  # the process survives: the handler only sets a flag
    assert monitor.after_step(2, GOOD) == exitcodes.PREEMPTED
    assert sig.name in monitor.message and "step 2" in monitor.message


def test_consecutive_skips_diverge_naming_the_step():
    monitor = FaultMonitor(3)
    codes = [monitor.after_step(step, r) for step, r in enumerate([BAD, BAD, GOOD, BAD, BAD, BAD], start=1)]
    assert codes == [None] * 5 + [exitcodes.DIVERGED]
    assert "ending at step 6" in monitor.message
