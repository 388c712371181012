"""Skipped-step bookkeeping kept on the device, so the host reads it only when it logs (no host
synchronisation inside the step; docs/engine.md).

Every step adds its 0/1 "skipped" flag; besides the total, the counter tracks the current run of
consecutive skips and the longest run since the last `read()`, with the step each run started
at. Reading every N steps therefore misses no run: a run of 5 inside a 10-step interval is
reported even if good steps followed it before the read.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SkipReport:
    total: int  # skipped steps so far (this stage, resumed counts included)
    longest_run: int  # the longest run of consecutive skips since the previous read
    longest_run_first_step: int  # its first step (1-based step number; 0 when there was none)
    current_run: int  # consecutive skips ending at the latest step (0 if it was applied)

    @property
    def longest_run_last_step(self) -> int:
        return self.longest_run_first_step + self.longest_run - 1


class SkipCounter:
    """Device-side counters; `update` enqueues a few tiny kernels and never reads back."""

    FIELDS = ("total", "run", "run_first", "longest", "longest_first")

    def __init__(self, device):
        self.device = torch.device(device)
        self.load_state_dict({})

    def update(self, skipped, step_number: int) -> None:
        """`skipped`: a bool (or 0-d bool tensor) for the step numbered `step_number` (1-based)."""
        s = torch.as_tensor(skipped, device=self.device).to(torch.int64)
        self.total += s
        self.run = (self.run + 1) * s
        self.run_first = torch.where(self.run == 1, step_number, self.run_first)
        longer = self.run > self.longest
        self.longest = torch.where(longer, self.run, self.longest)
        self.longest_first = torch.where(longer, self.run_first, self.longest_first)

    def read(self) -> SkipReport:
        """One device->host copy; the next interval's longest run starts as the current run."""
        total, run, _, longest, longest_first = torch.stack([getattr(self, f) for f in self.FIELDS]).tolist()
        self.longest, self.longest_first = self.run.clone(), self.run_first.clone()
        return SkipReport(total=total, longest_run=longest, longest_run_first_step=longest_first, current_run=run)

    def state_dict(self) -> dict:
        """JSON-able (a host read: call it when checkpointing, not every step)."""
        return dict(zip(self.FIELDS, torch.stack([getattr(self, f) for f in self.FIELDS]).tolist()))

    def load_state_dict(self, state: dict) -> None:
        for f in self.FIELDS:
            setattr(self, f, torch.tensor(int(state.get(f, 0)), dtype=torch.int64, device=self.device))
