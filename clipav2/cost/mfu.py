"""Dense bf16 peaks of the chips we train on, and the MFU arithmetic.

MFU = achieved model FLOP/s per chip / the chip's dense bf16 peak. Model FLOPs are the analytic
count (3 x forward), so recomputation from activation checkpointing is not counted.
"""
from __future__ import annotations


def peak_tflops(device_name: str) -> float | None:
    """The chip's dense bf16 peak in TFLOP/s from the one accelerator table (`clipav2.accelerators`:
    A100 312, H100 SXM 989, H200 989), or None for a chip without one (the CPU, an unknown GPU)."""
    from clipav2.accelerators import detect_accelerator, get_accelerator

    key = detect_accelerator(device_name)
    peak = get_accelerator(key).peak_flops if key else None
    return peak / 1e12 if peak else None


def achieved_tflops(train_flops_per_sample: float, samples_per_s_per_chip: float) -> float:
    """Model TFLOP/s per chip: FLOPs of one training sample x samples per second per chip."""
    return train_flops_per_sample * samples_per_s_per_chip / 1e12


def mfu(train_flops_per_sample: float, samples_per_s_per_chip: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (CPU)."""
    if peak is None:
        return None
    if peak <= 0:
        raise ValueError(f"peak TFLOP/s must be > 0, got {peak}")
    return achieved_tflops(train_flops_per_sample, samples_per_s_per_chip) / peak


def samples_per_s_for_mfu(train_flops_per_sample: float, target_mfu: float, peak: float) -> float:
    """The per-chip throughput a target MFU means (e.g. 45% of an H100 for H/14 at 84 px)."""
    return target_mfu * peak * 1e12 / train_flops_per_sample
