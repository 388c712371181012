"""`parallel.micro_batch: auto`: the largest micro-batch that fits the device, found once per
stage and recorded in RUN_DIR/micro_batch.json, so a stage runs without gradient accumulation
whenever the per-rank batch fits.

The memory model counts the tensors of one step, per rank, at the step's highest points
(checked against torch's own tracker: `clipav2 plan CONFIG --memory`, docs/performance.md):
- fixed: fp32 parameters, gradients and AdamW state, 4 + 4 + 8 bytes per parameter (6 with the
  bf16 first moment), divided by the world under fsdp and ZeRO-3; under fsdp also the gathered
  fp32 parameters and gradients of the blocks in flight (two blocks, and one block's gradient),
  and, with gradient accumulation, the whole unsharded fp32 gradient: FSDP2 accumulates
  unsharded gradients over the micro-steps that skip the reduce-scatter;
- inputs: the whole per-rank batch's uint8 images and their fp32 normalised copies (the step
  normalises every micro-batch first);
- kept activations: a checkpointed block keeps its input, the residual stream (in the parameters'
  dtype: fp32 in both towers under fp32 and bf16 autocast, bf16 under bf16_params); a block run
  plainly keeps every tensor its backward needs:
  the LayerNorm outputs cast for the matmuls, q, k, v, the attention output, the mid-block
  residual, the MLP's hidden activations before and after GELU;
- the loss: two fp32 logit matrices (this rank's rows x the global batch) and their two
  log-softmaxes, beside the gathered features of the global batch;
- the backward of one block: what the block keeps (recomputed under checkpointing: the working
  set the forward did not hold), the gradient of its output and of its MLP hidden activations.
The peak is the largest of: the end of the forward (loss included), and the backward of the top
block of each tower (the text tower is differentiated first, so the image tower's backward no
longer holds the text tower's kept inputs). 10% of the device is left for the allocator, the
CUDA context and the collectives' buffers.
The first step of the stage is the trial: a step that runs out of memory, or whose measured peak
exceeds the device, halves the micro-batch before any update is applied (clipav2.train.loop).
"""
from __future__ import annotations

import json
from pathlib import Path

from clipav2.accelerators import GIB

RECORD = "micro_batch.json"
RESERVE = 0.10


def _residual_bytes(precision: str) -> tuple[int, int]:
    """Bytes per element of the (image, text) residual stream."""
    if precision == "fp32":
        return 4, 4
    return (2, 2) if precision == "bf16_params" else (4, 4)


def _block_kept(width: int, hidden: int, act: int, res: int) -> int:
    """Bytes per token a plainly run block keeps for its backward (see the module's docstring)."""
    return width * (act + 3 * act + act + res + act) + hidden * 2 * act


def _towers(stage, precision: str):
    """[(tokens, width, hidden, depth, residual bytes)] of the (image, text) towers."""
    v, t = stage.arch.vision, stage.arch.text
    res_v, res_t = _residual_bytes(precision)
    return [(stage.kept_image_tokens + 1, v.width, v.mlp, v.depth, res_v), (stage.text_len, t.width, t.mlp, t.depth, res_t)]


def fixed_bytes(cfg, world_size: int, arch=None) -> int:
    """Parameters, gradients and AdamW state per rank. `arch`: the stage's (Stage.arch); default,
    the configured model's."""
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


def _gathered_bytes(cfg, arch) -> int:
    """fsdp: the full fp32 parameters of two blocks in flight and one block's gradient."""
    if cfg.parallel.strategy != "fsdp":
        return 0
    block = max(12 * w * w + 2 * w * h for w, h in ((arch.vision.width, arch.vision.mlp), (arch.text.width, arch.text.mlp)))
    return 3 * 4 * block


def step_bytes(cfg, stage, world_size: int, micro: int, precision: str) -> dict:
    """The model's per-rank bytes of one step at `micro` samples per micro-step, by part, with
    the peak ("total") and where it is ("at")."""
    from clipav2.models.flops import count_params
    from clipav2.parallel.apply import checkpoint_flags

    per_rank = stage.global_batch // world_size
    act = 4 if precision == "fp32" else 2
    fixed = fixed_bytes(cfg, world_size, stage.arch) + _gathered_bytes(cfg, stage.arch)
    if micro < per_rank and cfg.parallel.strategy == "fsdp":  # accumulation without sync: whole gradients
        fixed += 4 * count_params(stage.arch)["total"] * (world_size - 1) // world_size
    inputs = per_rank * 3 * stage.image_size**2 * (1 + 4)
    kept, top = [], []
    for tokens, width, hidden, depth, res in _towers(stage, precision):
        plain = _block_kept(width, hidden, act, res)
        flags = checkpoint_flags(cfg.model.checkpointing, depth)
        kept.append(micro * tokens * sum(width * res if recompute else plain for recompute in flags))
        # the top block's backward adds its recomputed activations (when checkpointed), the gradient
        # of its output and of its MLP's hidden activations
        top.append(micro * tokens * ((plain if flags[-1] else 0) + width * res + hidden * act))
    text_tail = micro * stage.text_len * stage.arch.text.width * 4  # the final LayerNorm's input
    loss = 4 * per_rank * stage.global_batch * 4 + 2 * stage.global_batch * stage.arch.embed_dim * 4
    points = {
        "forward end": kept[0] + kept[1] + text_tail + loss,
        "text backward": kept[0] + kept[1] + top[1],
        "image backward": kept[0] + top[0],
    }
    at = max(points, key=points.get)
    return {"fixed": fixed, "inputs": inputs, "kept": sum(kept), "loss": loss, "at": at,
            "total": int(fixed + inputs + points[at])}


def choose(cfg, stage, world_size: int, device_bytes: int, precision: str) -> dict:
    """The largest divisor of the per-rank batch the model says fits, with the figures behind it."""
    per_rank = stage.global_batch // world_size
    budget = device_bytes * (1 - RESERVE)
    totals = {d: step_bytes(cfg, stage, world_size, d, precision)["total"]
              for d in range(per_rank, 0, -1) if per_rank % d == 0}  # largest first
    micro = next((d for d, total in totals.items() if total <= budget), 1)
    return {"micro_batch": micro, "per_rank_batch": per_rank, "micro_steps": per_rank // micro,
            "predicted_bytes": totals[micro], "whole_batch_bytes": totals[per_rank], "device_bytes": int(device_bytes)}


def explain(stage_name: str, fit: dict) -> str:
    head = (f"[{stage_name}] micro-batch auto: {fit['micro_batch']} of a per-rank batch of {fit['per_rank_batch']} "
            f"(model: {fit['predicted_bytes'] / GIB:.1f} of {fit['device_bytes'] / GIB:.1f} GiB)")
    if fit["micro_steps"] == 1:
        return head + "; no gradient accumulation"
    return (head + f"; {fit['micro_steps']} micro-steps of accumulation because the per-rank batch needs "
            f"{fit['whole_batch_bytes'] / GIB:.1f} GiB at once: each step adds a "
            f"no-grad forward of the whole batch (+27% compute with every block checkpointed, +1/3 without) to keep the loss over the global batch; "
            f"checkpointing more blocks (model.checkpointing) or more GPUs avoids it")


def _key(stage, world) -> str:
    from clipav2.parallel.env import device_name

    return f"{stage.name} {device_name(world.device)} x{world.world_size}"


def release_device_memory(device) -> None:
    """The allocator's cache given back and the peak statistics reset, so the free memory read next
    and the trial's measured peak are this stage's own (CUDA only)."""
    import gc

    import torch

    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _free_bytes(world) -> int:
    """Free device memory, the smallest over the ranks, so that every rank picks the same
    micro-batch (ranks stepping different numbers of micro-steps would hang the collectives).
    The CPU: no limit (RAM is not the limit of a test run)."""
    import torch

    if world.device.type != "cuda":
        return 2**62
    release_device_memory(world.device)  # what the previous stage and its evaluation left
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

    records = _read_records(run_dir)
    key = _key(stage, world)
    if key not in records:
        records[key] = choose(cfg, stage, world.world_size, _free_bytes(world), resolve_precision(cfg.parallel, world))
        if world.is_main:
            _write_records(run_dir, records)
    return records[key]


def _read_records(run_dir) -> dict:
    path = Path(run_dir) / RECORD
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_records(run_dir, records: dict) -> None:
    path = Path(run_dir) / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))


class TrialFailed(RuntimeError):
    """The stage's first step does not fit: its measured peak exceeds the budget the fit used."""


def halve(run_dir, stage, world, fit: dict, why: str) -> dict:
    """The trial failed at `fit`: half the micro-batch (the largest divisor of the per-rank batch
    at most half; more micro-steps, the same global batch), recorded with the reason, so a resumed run starts at the size that was kept."""
    if fit["micro_batch"] == 1:
        raise RuntimeError(f"[{stage.name}] a micro-batch of 1 does not fit ({why})")
    per_rank = fit["per_rank_batch"]
    micro = max(d for d in range(1, fit["micro_batch"] // 2 + 1) if per_rank % d == 0)
    new = dict(fit, micro_batch=micro, micro_steps=per_rank // micro,
               halved=fit.get("halved", []) + [f"{fit['micro_batch']}: {why}"])
    if world.is_main:
        records = _read_records(run_dir)
        records[_key(stage, world)] = new
        _write_records(run_dir, records)
    return new


def record_trial(run_dir, stage, world, peak_bytes: int) -> None:
    """The first step's measured peak, beside the model's prediction (main rank)."""
    if not world.is_main:
        return
    records = _read_records(run_dir)
    key = _key(stage, world)
    if key in records:
        records[key]["measured_peak_bytes"] = int(peak_bytes)
        _write_records(run_dir, records)
