"""What the rest of the run will cost, from what it has measured so far.

The current stage finishes at its measured samples/s; each later stage is the same machine at the
same MFU, so its time scales with its analytic training FLOPs per sample. Evaluation and
checkpoint overhead continue at the ratio measured so far. Stages already done cost what the
ledger says.
"""
from __future__ import annotations

from clipav2.config import Config
from clipav2.cost.ledger import Ledger
from clipav2.cost.plan import stage_flops


def overhead_ratio(ledger: Ledger) -> float:
    """(eval + checkpoint) time per unit of training time (steps including their data waits)."""
    total = {k: sum(s["gpu_seconds"][k] for s in ledger.stages.values()) for k in ("train", "data_wait", "eval", "checkpoint")}
    stepping = total["train"] + total["data_wait"]
    return (total["eval"] + total["checkpoint"]) / stepping if stepping > 0 else 0.0


def project(cfg: Config, ledger: Ledger, current_stage: str, samples_per_s: float, flops=None) -> dict:
    """`samples_per_s` is the whole job's measured training rate in `current_stage`; the ledger's
    per-stage `samples` say how far each stage got. `flops` (stage name -> FLOPs per sample) may be
    passed to avoid recounting. Returns per-stage spent / to-go GPU-hours and dollars and totals."""
    names = [s.name for s in cfg.stages]
    if current_stage not in names:
        raise ValueError(f"projection: no stage {current_stage!r} in the recipe ({names})")
    if samples_per_s <= 0:
        raise ValueError(f"projection: samples/s must be > 0, got {samples_per_s}")
    flops = flops or {s.name: stage_flops(cfg, i) for i, s in enumerate(cfg.stages)}
    seconds_per_flop = 1.0 / (samples_per_s * flops[current_stage])  # wall seconds of the job
    scale = 1.0 + overhead_ratio(ledger)
    current = names.index(current_stage)
    rows = []
    for i, s in enumerate(cfg.stages):
        entry = ledger.stages.get(s.name)
        done = entry["samples"] if entry else 0
        spent_s = sum(entry["gpu_seconds"].values()) if entry else 0.0
        spent_usd = sum(entry["usd"].values()) if entry else 0.0
        left = 0 if i < current else max(s.samples - done, 0)
        to_go_s = left * flops[s.name] * seconds_per_flop * scale * ledger.gpus
        rows.append({"name": s.name, "samples_done": done, "samples_planned": s.samples,
                     "gpu_hours_spent": spent_s / 3600.0, "cost_usd_spent": spent_usd,
                     "gpu_hours_to_go": to_go_s / 3600.0, "cost_usd_to_go": to_go_s / 3600.0 * ledger.price})
    spent = ledger.total_usd  # includes time charged to stages not in the recipe (none, normally)
    to_go = sum(r["cost_usd_to_go"] for r in rows)
    return {"current_stage": current_stage, "samples_per_s": samples_per_s, "overhead_ratio": scale - 1.0,
            "stages": rows, "spent_usd": spent, "to_go_usd": to_go, "projected_total_usd": spent + to_go,
            "projected_total_gpu_hours": ledger.total_gpu_seconds / 3600.0 + sum(r["gpu_hours_to_go"] for r in rows)}
