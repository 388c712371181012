"""`parallel.micro_batch: auto`: the largest micro-batch that fits the device, found once per
stage and recorded in RUN_DIR/micro_batch.json, so a stage runs without gradient accumulation
whenever the per-rank batch fits.

The memory model (bytes per rank):
- fixed: parameters, gradients and AdamW state, 4 + 4 + 8 bytes per parameter (6 with the bf16
  first moment), divided by the world under fsdp and ZeRO-3 (optimizer state only under ZeRO-1/2);
- per sample: the activations each block keeps for its backward, ~34 x tokens x width bytes at
  2-byte activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
  Transformer Models", table 2, with the attention scores not stored, as flash attention does),
  twice that in fp32; a checkpointed block keeps only its input (2 x tokens x width);
- 10% of the device kept free for the allocator and the recomputed block's working set.
The first step of the stage is the trial: its measured peak is recorded beside the prediction.
"""
from __future__ import annotations

import json
from pathlib import Path

RECORD = "micro_batch.json"
RESERVE = 0.10


def _towers(stage):
    """[(tokens, width, depth)] of the two towers of a resolved stage."""
    v, t = stage.arch.vision, stage.arch.text
    return [(stage.kept_image_tokens + 1, v.width, v.depth), (stage.text_len, t.width, t.depth)]


def activation_bytes_per_sample(cfg, stage, precision: str) -> int:
    """`stage`: resolved (clipav2.stage.Stage)."""
    from clipav2.parallel.apply import checkpoint_flags

    scale = 1 if precision.startswith("bf16") else 2
    total = 0
    for tokens, width, depth in _towers(stage):
        for recompute in checkpoint_flags(cfg.model.checkpointing, depth):
            total += (2 if recompute else 34) * tokens * width * scale
    return total


def fixed_bytes(cfg, world_size: int, arch=None) -> int:
    """`arch`: the stage's (clipav2.stage.Stage.arch); default, the configured model's."""
    from clipav2.models.arch import get_arch
    from clipav2.models.flops import count_params

    n = count_params(arch or get_arch(cfg.model.name))["total"]
    p = cfg.parallel
    weights, grads, adam = 4 * n, 4 * n, (6 if p.bf16_momentum else 8) * n
    if p.strategy == "fsdp" or (p.strategy == "deepspeed" and p.zero_stage == 3):
        return (weights + grads + adam) // world_size
    if p.strategy == "deepspeed":
        return weights + (grads // world_size if p.zero_stage == 2 else grads) + adam // world_size
    return weights + grads + adam


def choose(cfg, stage, world_size: int, device_bytes: int, precision: str) -> dict:
    """The largest divisor of the per-rank batch the model says fits, with the figures behind it."""
    per_rank = stage.global_batch // world_size
    per_sample = activation_bytes_per_sample(cfg, stage, precision)
    fixed = fixed_bytes(cfg, world_size, stage.arch)
    room = device_bytes * (1 - RESERVE) - fixed
    fits = max(1, int(room // per_sample)) if room > 0 else 1
    micro = max(d for d in range(1, per_rank + 1) if per_rank % d == 0 and d <= fits)
    return {"micro_batch": micro, "per_rank_batch": per_rank, "micro_steps": per_rank // micro,
            "predicted_bytes": int(fixed + micro * per_sample),
            "per_sample_bytes": per_sample, "device_bytes": int(device_bytes)}


def explain(stage_name: str, fit: dict) -> str:
    gib = 2**30
    head = (f"[{stage_name}] micro-batch auto: {fit['micro_batch']} of a per-rank batch of {fit['per_rank_batch']} "
            f"(model: {fit['predicted_bytes'] / gib:.1f} of {fit['device_bytes'] / gib:.1f} GiB)")
    if fit["micro_steps"] == 1:
        return head + "; no gradient accumulation"
    return (head + f"; {fit['micro_steps']} micro-steps of accumulation because the per-rank batch needs "
            f"{fit['per_rank_batch'] * fit['per_sample_bytes'] / gib:.1f} GiB of activations: each step adds a "
            f"no-grad forward of the whole batch (about +1/3 compute) to keep the loss over the global batch; "
            f"checkpointing more blocks (model.checkpointing) or more GPUs avoids it")


def _key(stage, world) -> str:
    from clipav2.parallel.env import device_name

    return f"{stage.name} {device_name(world.device)} x{world.world_size}"


def _free_bytes(world) -> int:
    """Free device memory, the smallest over the ranks, so that every rank picks the same
    micro-batch (ranks stepping different numbers of micro-steps would hang the collectives).
    The CPU: no limit (RAM is not the limit of a test run)."""
    import torch

    if world.device.type != "cuda":
        return 2**62
    free = torch.tensor(torch.cuda.mem_get_info(world.device)[0], device=world.device)
    if world.distributed:
        import torch.distributed as dist

        dist.all_reduce(free, op=dist.ReduceOp.MIN)
    return int(free)


def fit_micro_batch(cfg, stage, world, run_dir) -> dict:
    """Once per (stage, device, world size): choose and record; later calls read the record.
    Every rank reads the record before the collective in `_free_bytes`, and the main rank writes
    it only after, so all ranks agree on whether it exists."""
    from clipav2.parallel.base import resolve_precision

    path = Path(run_dir) / RECORD
    records = json.loads(path.read_text()) if path.is_file() else {}
    key = _key(stage, world)
    if key not in records:
        records[key] = choose(cfg, stage, world.world_size, _free_bytes(world), resolve_precision(cfg.parallel, world))
        if world.is_main:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=1))
    return records[key]


def record_trial(run_dir, stage, world, peak_bytes: int) -> None:
    """The first step's measured peak, beside the model's prediction (main rank)."""
    path = Path(run_dir) / RECORD
    if not world.is_main or not path.is_file():
        return
    records = json.loads(path.read_text())
    key = _key(stage, world)
    if key in records:
        records[key]["measured_peak_bytes"] = int(peak_bytes)
        path.write_text(json.dumps(records, indent=1))
