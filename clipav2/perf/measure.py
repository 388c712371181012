"""Timing and memory for a window of training steps, identical for our trainer and the baseline.

No host synchronisation inside the window: on CUDA each step's boundary is a recorded event and
the host syncs once at the end; data wait is the host time spent blocked in `next(batches)`.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field

import torch


@dataclass
class Window:
    """What one timed window measured."""

    steps: int
    seconds: float  # wall time of the whole window, one sync at each end
    step_seconds: list[float] = field(default_factory=list)  # per step (CUDA events or host clock)
    wait_seconds: float = 0.0  # host time blocked waiting for the next batch
    last_output: object = None  # what the last step returned (a loss tensor), read after the sync

    @property
    def data_wait_fraction(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, batches, steps: int, device: torch.device) -> Window:
    """Run `step(batch)` `steps` times on batches drawn from the iterator `batches`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cuda = device.type == "cuda"
    marks, wait = [], 0.0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        marks.append(_mark(cuda))
        t = time.perf_counter()
        batch = next(batches)
        wait += time.perf_counter() - t
        out = step(batch)
    marks.append(_mark(cuda))
    synchronize(device)
    seconds = time.perf_counter() - start
    if cuda:
        per_step = [a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])]
    else:
        per_step = [b - a for a, b in zip(marks, marks[1:])]
    return Window(steps=steps, seconds=seconds, step_seconds=per_step, wait_seconds=wait, last_output=out)


def _mark(cuda: bool):
    if not cuda:
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: CUDA's allocator counter, or the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif sys.platform.startswith("linux"):
        try:  # writing 5 to clear_refs resets VmHWM (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # then the peak is the process lifetime's, which can only over-report


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max_memory_allocated since the reset. CPU: the peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
