"""The budget guard: warn once when the projection passes the budget; stop (with a checkpoint,
exit code `clipav2.exitcodes.BUDGET`) when the spend would cross budget x stop_fraction before
the next checkpoint could be written. Off when no budget is set.
"""
from __future__ import annotations

import sys

OK, WARN, STOP = "ok", "warn", "stop"


class BudgetGuard:
    def __init__(self, budget_usd: float | None, stop_fraction: float = 1.0, log=None):
        if budget_usd is not None and budget_usd <= 0:
            raise ValueError(f"cost.budget_usd: {budget_usd} must be > 0")
        if not 0 < stop_fraction <= 1:
            raise ValueError(f"cost.stop_fraction: {stop_fraction} must be in (0, 1]")
        self.budget, self.stop_fraction = budget_usd, stop_fraction
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.warned = False
        self.message = ""

    @classmethod
    def from_config(cls, cost_cfg, log=None) -> "BudgetGuard":
        return cls(cost_cfg.budget_usd, cost_cfg.stop_fraction, log)

    @property
    def enabled(self) -> bool:
        return self.budget is not None

    @property
    def limit_usd(self) -> float | None:
        return None if self.budget is None else self.budget * self.stop_fraction

    def check(self, ledger, projected_total_usd: float | None, seconds_to_next_checkpoint: float) -> str:
        """Call at each log interval. `seconds_to_next_checkpoint`: wall seconds until the loop
        would next checkpoint; the guard adds the ledger's mean checkpoint-write time. "stop"
        means: checkpoint now and exit with `exitcodes.BUDGET`."""
        if not self.enabled:
            return OK
        rate = ledger.usd_per_second
        at_next = ledger.total_usd + rate * (max(seconds_to_next_checkpoint, 0.0) + ledger.mean_seconds("checkpoint"))
        if at_next >= self.limit_usd:
            self.message = (f"budget guard: ${ledger.total_usd:,.2f} spent; by the next checkpoint it would be "
                            f"${at_next:,.2f}, past the limit ${self.limit_usd:,.2f} (budget ${self.budget:,.2f} x "
                            f"stop_fraction {self.stop_fraction}); checkpointing and stopping")
            self.log(self.message)
            return STOP
        if projected_total_usd is not None and projected_total_usd > self.budget and not self.warned:
            self.warned = True
            self.message = (f"budget guard: the projected total ${projected_total_usd:,.2f} exceeds the budget "
                            f"${self.budget:,.2f}; the run will stop near ${self.limit_usd:,.2f} unless the budget is raised")
            self.log(self.message)
            return WARN
        return OK

    def spent_before_start(self, ledger, stopped_under: float | None) -> bool:
        """Before the first step of a resumed stage: True (with `message` set) if the budget is
        already spent, or the checkpoint was written by a budget stop under a limit that has not
        been raised since (a resubmitted job would otherwise train one more interval)."""
        if not self.enabled or ledger is None:
            return False
        if ledger.total_usd >= self.limit_usd or (stopped_under is not None and stopped_under >= self.limit_usd):
            self.message = (f"budget guard: ${ledger.total_usd:,.2f} spent, the limit is ${self.limit_usd:,.2f} (budget "
                            f"${self.budget:,.2f} x stop_fraction {self.stop_fraction}) and the run stopped there before; "
                            "raise cost.budget_usd to continue; not starting")
            self.log(self.message)
            return True
        return False
