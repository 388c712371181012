"""FaultMonitor (clipav2/train/faults.py): a preemption signal stops after the step with PREEMPTED,
and is caught for the whole run (also between stages, before the next stage's monitor exists);
N consecutive skipped steps stop with DIVERGED naming the step, found from the results read on
the host or from the device-side skip counters read at log steps; a good step resets the count."""
import os
import signal

import pytest
import torch

from clipav2 import exitcodes
from clipav2.train.step import StepResult
from nosync import forbid_host_sync
from clipav2.train.skips import SkipCounter
from clipav2 import signals
from clipav2.signals import install_signal_handlers
from clipav2.train.faults import FaultMonitor

GOOD = StepResult(lr=1e-3, grad_norm=1.0, skipped=False, loss=2.0)
BAD = StepResult(lr=1e-3, grad_norm=float("nan"), skipped=True, loss=float("nan"))


@pytest.fixture(autouse=True)
def restore_handlers():
    saved = {s: signal.getsignal(s) for s in signals.PREEMPT_SIGNALS}
    signals.clear_signal()
    yield
    signals.clear_signal()
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


def test_a_signal_between_stages_stops_the_next_stage():
    install_signal_handlers()  # once, before the first stage
    first_stage = FaultMonitor(3)
    assert first_stage.after_step(10, GOOD) is None
    os.kill(os.getpid(), signal.SIGUSR1)  # the stage has ended: weights saved, next one loading
    second_stage = FaultMonitor(3)
    assert second_stage.after_step(1, GOOD) == exitcodes.PREEMPTED
    assert "SIGUSR1" in second_stage.message and "after step 1" in second_stage.message


def test_a_signal_before_the_first_monitor_is_kept():
    install_signal_handlers()
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: only the flag is set
    assert signals.signal_received() == "SIGTERM"
    monitor = FaultMonitor(3)
    assert monitor.after_step(1, GOOD) == exitcodes.PREEMPTED
    assert FaultMonitor(3).after_step(2, GOOD) is None  # acted on: not seen twice


def test_installing_again_keeps_a_pending_signal():
    install_signal_handlers()
    os.kill(os.getpid(), signal.SIGUSR1)
    install_signal_handlers()
    FaultMonitor(3)
    assert signals.signal_received() == "SIGUSR1"


def _feed(counter, flags, start=1):
    for step, flag in enumerate(flags, start=start):
        counter.update(flag, step)


def test_divergence_found_at_the_next_read_naming_the_run():
    """Skips at steps 4-6, reads every 4 steps: nothing at step 4 (a run of 1), then the run of 3
    that ended at step 6 is reported at step 8 though steps 7 and 8 were good."""
    counter, monitor = SkipCounter("cpu"), FaultMonitor(3)
    flags = [False, False, False, True, True, True, False, False]
    codes = []
    for step, flag in enumerate(flags, start=1):
        counter.update(flag, step)
        device_result = StepResult(lr=1e-3, grad_norm=torch.tensor(1.0), skipped=torch.tensor(flag), loss=torch.tensor(2.0))
        report = counter.read() if step % 4 == 0 else None
        with forbid_host_sync():  # a device result is not read: its skip counts at the next report
            codes.append(monitor.after_step(step, device_result, report))
    assert codes == [None] * 7 + [exitcodes.DIVERGED]
    assert "3 consecutive non-finite steps starting at step 4, ending at step 6 (seen at step 8" in monitor.message


def test_a_run_across_reads_is_counted_whole():
    counter, monitor = SkipCounter("cpu"), FaultMonitor(3)
    _feed(counter, [False, True, True])
    assert monitor.after_step(3, skips=counter.read()) is None  # a run of 2 so far
    _feed(counter, [True, False], start=4)
    assert monitor.after_step(5, skips=counter.read()) == exitcodes.DIVERGED
    assert "starting at step 2, ending at step 4" in monitor.message


def test_short_runs_do_not_diverge():
    counter, monitor = SkipCounter("cpu"), FaultMonitor(3)
    _feed(counter, [True, True, False, True, True, False, True, True])
    report = counter.read()
    assert (report.total, report.longest_run, report.current_run) == (6, 2, 2)
    assert monitor.after_step(8, skips=report) is None
