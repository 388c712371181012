"""The budget guard: off without a budget, warns once, stops before the next checkpoint would
cross budget x stop_fraction, and a loop following the contract exits with exitcodes.BUDGET."""
import pytest

from clipav2 import exitcodes
from clipav2.config import CostConfig
from clipav2.cost.guard import OK, STOP, WARN, BudgetGuard
from clipav2.cost.ledger import Ledger


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


def _ledger(spent_seconds, gpus=10, price=36.0):
    """gpus x price = $360/h = $0.1 per wall second."""
    clock = FakeClock()
    led = Ledger(gpus, price, clock)
    led.add("pretrain", "train", spent_seconds)
    return led


def test_off_without_a_budget():
    guard = BudgetGuard.from_config(CostConfig(budget_usd=None))
    assert not guard.enabled
    assert guard.check(_ledger(10**7), 10**9, 10**6) == OK


def test_warns_once_when_the_projection_exceeds_the_budget():
    messages = []
    guard = BudgetGuard(100.0, log=messages.append)
    led = _ledger(100)  # $10 spent
    assert guard.check(led, 90.0, 10) == OK
    assert guard.check(led, 120.0, 10) == WARN
    assert guard.check(led, 130.0, 10) == OK
    assert len(messages) == 1 and "$120.00" in messages[0] and "$100.00" in messages[0]


def test_stops_when_the_next_checkpoint_would_cross_the_limit():
    guard = BudgetGuard(100.0, stop_fraction=0.9, log=lambda m: None)  # limit $90
    led = _ledger(800)  # $80 spent, $0.1 per second
    led.add("pretrain", "checkpoint", 20)  # one checkpoint of 20 s: $82 now, $2 per checkpoint write
    # $82 + 0.1 x (59 + 20) = $89.9 < $90: carry on; at 61 s: $90.1: stop now
    assert guard.check(led, 95.0, 59) == OK  # projection under the budget: no warning either
    assert guard.check(led, 95.0, 61) == STOP
    assert "$90.00" in guard.message and "stop" in guard.message


def _mini_loop(budget, steps, step_s, every, gpus=8, price=3.0):
    """The training loop's side of the contract (clipav2/train/loop.py does the same): check at
    each log step; on "stop", checkpoint and return exitcodes.BUDGET."""
    clock = FakeClock()
    led = Ledger(gpus, price, clock)
    guard = BudgetGuard(budget, log=lambda m: None)
    checkpoints = []
    for step in range(1, steps + 1):
        with led.track("train", "pretrain"):
            clock.now += step_s
        steps_left = every - step % every
        if guard.check(led, None, steps_left * step_s) == STOP:
            with led.track("checkpoint", "pretrain"):
                clock.now += 1
            checkpoints.append(step)
            return exitcodes.BUDGET, led, checkpoints
        if step % every == 0:
            with led.track("checkpoint", "pretrain"):
                clock.now += 1
            checkpoints.append(step)
    return exitcodes.OK, led, checkpoints


def test_a_loop_following_the_contract_stops_under_budget_with_the_budget_exit_code():
    # 8 GPUs x $3/h = $0.00667 per second; 10 s steps; budget $5 = 750 s of the job
    code, led, checkpoints = _mini_loop(budget=5.0, steps=1000, step_s=10.0, every=10)
    assert code == exitcodes.BUDGET == 76
    assert led.total_usd <= 5.0  # stopped before crossing, including the final checkpoint
    assert led.total_usd > 5.0 - 10 * 10 * led.usd_per_second - 2 * led.usd_per_second  # no earlier than one interval
    assert checkpoints[-1] not in checkpoints[:-1]
    code, led, _ = _mini_loop(budget=None, steps=100, step_s=10.0, every=10)
    assert code == exitcodes.OK


@pytest.mark.parametrize("budget, fraction", [(0.0, 1.0), (-5.0, 1.0), (10.0, 0.0), (10.0, 1.5)])
def test_bad_settings_are_named(budget, fraction):
    with pytest.raises(ValueError, match="cost\\."):
        BudgetGuard(budget, fraction)
