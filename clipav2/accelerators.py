"""Accelerators: $/device-hour, dense bf16 peak FLOP/s and memory, plus detection from a device name.

Prices move; every entry says where its number came from and when. Override with
`cost.price_per_gpu_hour=...` (config) or `--price` (commands). TPU v3 is per chip, for reading
the paper (its runs were on TPU v3; its costs are A100 estimates).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class PriceError(ValueError):
    """A price or accelerator name that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class Accelerator:
    name: str
    price_per_hour: float  # USD per device-hour (one GPU, or one TPU chip)
    peak_flops: float | None  # dense bf16 FLOP/s; None where MFU means nothing (the CPU)
    source: str
    memory_bytes: int | None = None  # the card's memory as torch reports it (nvidia-smi's MiB); `plan --memory`


GIB = 2**30


ACCELERATORS: dict[str, Accelerator] = {
    # GCP Compute Engine GPU pricing page, us-central1 on-demand, NVIDIA A100 40GB: $2.933908
    # per GPU-hour, GPU only (VM extra); read 2023-06. Peak: NVIDIA A100 datasheet, 312 TFLOP/s.
    "a100-40gb": Accelerator("a100-40gb", 2.933908, 312e12, "GCP on-demand us-central1, 2023-06", 40 * GIB),
    # The CLIPA-v2 paper's own price (arXiv 2306.15658, 2023-06, section 4): GCP A100-80GB.
    "a100-80gb": Accelerator("a100-80gb", 1.575, 312e12, "CLIPA-v2 paper (GCP), 2023-06", 80 * GIB),
    # mercatus-ai.com/blog/cloud-gpu-pricing, 2026-05: specialty clouds $2.50-3.50 for H100
    # SXM5; midpoint. Peak: NVIDIA H100 SXM datasheet, 989 TFLOP/s dense bf16.
    "h100": Accelerator("h100", 3.00, 989e12, "specialty-cloud midpoint, mercatus-ai.com, 2026-05", 80 * GIB),
    # The other H100 form factors have fewer SMs / lower clocks. Peaks: NVIDIA H100 datasheet,
    # bf16 with sparsity halved: PCIe 1,513 -> 756 TFLOP/s, NVL 1,671 -> 835 TFLOP/s. No separate
    # price quote is recorded: they are charged as the H100 SXM entry (set cost.price_per_gpu_hour).
    "h100-pcie": Accelerator("h100-pcie", 3.00, 756e12, "price as h100 (no separate quote); peak NVIDIA datasheet", 80 * GIB),
    "h100-nvl": Accelerator("h100-nvl", 3.00, 835e12, "price as h100 (no separate quote); peak NVIDIA datasheet", 94 * GIB),
    # Same page, 2026-05: specialty clouds $3.50-4.50 for H200 SXM5; midpoint. Same compute as H100.
    "h200": Accelerator("h200", 4.00, 989e12, "specialty-cloud midpoint, mercatus-ai.com, 2026-05", 143771 * 2**20),
    # cloud.google.com/tpu/pricing, v3-8 device on-demand $8.00/h = 4 chips, read 2022-10.
    # Peak: 123 TFLOP/s bf16 per chip (Google TPU v3 system architecture page).
    "tpu-v3": Accelerator("tpu-v3", 2.00, 123e12, "GCP Cloud TPU on-demand, 2022-10"),
    # Development and CI machines: no price unless one is configured, and no MFU.
    "cpu": Accelerator("cpu", 0.0, None, "no charge unless cost.price_per_gpu_hour is set"),
}
ALIASES = {"a100": "a100-80gb", "a100-80g": "a100-80gb", "a100-40g": "a100-40gb", "h100-80gb": "h100",
           "h100-sxm": "h100", "h100-sxm5": "h100", "h200-141gb": "h200", "tpuv3": "tpu-v3", "v3": "tpu-v3"}


def get_accelerator(name: str) -> Accelerator:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in ACCELERATORS:
        raise PriceError(f"unknown accelerator {name!r}; known: {', '.join(ACCELERATORS)} (or set a price)")
    return ACCELERATORS[key]


def detect_accelerator(device_name: str) -> str | None:
    """'NVIDIA A100-SXM4-40GB' -> 'a100-40gb', 'NVIDIA H100 80GB HBM3' (SXM) -> 'h100',
    'NVIDIA H100 PCIe' -> 'h100-pcie', 'NVIDIA H100 NVL' -> 'h100-nvl', 'cpu' -> 'cpu'; None for
    anything else (then the price must be given)."""
    name = device_name.lower().replace("_", " ")
    if "a100" in name:
        return "a100-40gb" if "40gb" in name.replace(" ", "") else "a100-80gb"
    if "h200" in name:
        return "h200"
    if "h100" in name:
        for form in ("pcie", "nvl"):
            if form in name:
                return f"h100-{form}"
        return "h100"
    if "tpu" in name and "v3" in name:
        return "tpu-v3"
    if name.strip() in ("cpu", "") or name.startswith("cpu"):
        return "cpu"
    return None


def parse_price(value) -> float:
    """A price per device-hour from the command line or config: a finite number >= 0."""
    try:
        price = float(value)
    except (TypeError, ValueError):
        raise PriceError(f"price per GPU-hour: {value!r} is not a number") from None
    if not math.isfinite(price) or price < 0:
        raise PriceError(f"price per GPU-hour: {value!r} must be a finite number >= 0")
    return price


def resolve(gpu: str = "auto", price=None, device_name: str | None = None) -> tuple[Accelerator, float]:
    """The accelerator (named, or detected from `device_name` when `gpu` is 'auto') and the price
    to charge (an explicit `price` wins over the table)."""
    if gpu == "auto":
        detected = detect_accelerator(device_name or "cpu")
        if detected is None:
            if price is None:
                raise PriceError(f"cannot tell the price of device {device_name!r}: set cost.gpu or cost.price_per_gpu_hour")
            return Accelerator(device_name or "unknown", parse_price(price), None, "configured"), parse_price(price)
        gpu = detected
    accel = get_accelerator(gpu)
    return accel, accel.price_per_hour if price is None else parse_price(price)


def cost_usd(gpu_hours: float, price_per_hour: float) -> float:
    return gpu_hours * parse_price(price_per_hour)
