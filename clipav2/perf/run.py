"""Run one benchmark row: build a trainer's step, warm it up (compilation, allocator, cuDNN/SDPA
autotuning all happen here and are excluded; the last warm-up step also records which attention
kernels ran), then time a window of steps with `measure`.
The same function measures our trainer and open_clip, so the ratio compares like with like."""
from __future__ import annotations

import gc

import torch

from clipav2.models.kernels import attention_kernels, describe
from clipav2.parallel.apply import compile_seconds
from clipav2.perf.measure import peak_memory_bytes, reset_peak_memory, time_steps
from clipav2.perf.result import Row


def measure_row(row: Row, make_step, batches, device: torch.device) -> Row:
    """`make_step()` builds the trainer and returns `step(micro_batches) -> loss`; an out-of-memory
    anywhere is recorded in the row (the table shows it) instead of ending the benchmark."""
    step = None
    try:
        reset_peak_memory(device)
        compiled = compile_seconds()
        step = make_step()
        for _ in range(row.warmup - 1):
            step(next(batches))
        if row.warmup:
            with attention_kernels() as ran:
                step(next(batches))
            row.flags["sdpa_kernels"] = describe(ran)
        if row.flags.get("compile"):
            row.flags["compile_s"] = round(compile_seconds() - compiled, 1)  # torch.compile's share of the warm-up
        window = time_steps(step, batches, row.steps, device)
        loss = window.last_output
        loss = float(getattr(loss, "loss", loss)) if loss is not None else None
        return row.fill(window, peak_memory_bytes(device), loss)
    except torch.OutOfMemoryError:
        row.error = "out of memory"
        return row
    finally:
        del step
        release(device)


def release(device: torch.device) -> None:
    """Drop what the last trainer left so the next one starts from an empty device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
