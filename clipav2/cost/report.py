"""The budget report's numbers: per stage samples done / planned, GPU-hours by kind, dollars,
samples/s/GPU, MFU and the projected cost to finish; the budget lines; the paper's figures.
`build_report(run)` returns plain data that `render.py` turns into Markdown / HTML and `plot.py`
into the PNG."""
from __future__ import annotations

from clipav2.cost.ledger import KINDS
from clipav2.cost.paper import PAPER_PRICE, matching_run
from clipav2.cost.run_data import RunData

DEFAULT_BUDGET_LINES = (10_000.0, 15_000.0)  # the paper's two headline budgets


def _stepping_gpu_seconds(entry: dict) -> float:
    return entry["gpu_seconds"]["train"] + entry["gpu_seconds"]["data_wait"]


def _stage_flops(run: RunData) -> dict:
    if run.cfg is None:
        return {}
    from clipav2.cost.plan import stage_flops

    return {s.name: stage_flops(run.cfg, i) for i, s in enumerate(run.cfg.stages)}


def _peak_flops(run: RunData):
    from clipav2.accelerators import PriceError, get_accelerator

    try:
        return get_accelerator(run.ledger.accelerator).peak_flops
    except PriceError:
        return None


def stage_order(run: RunData) -> list[str]:
    names = [s.name for s in run.cfg.stages] if run.cfg else []
    return names + [n for n in run.ledger.stages if n not in names]


def _metrics_mean(run: RunData, stage: str, key: str):
    values = [r[key] for r in run.metrics if r.get("stage") == stage and isinstance(r.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def _projection(run: RunData, flops: dict):
    """Project from the latest stage that has measured throughput; None without a config."""
    if run.cfg is None or not flops:
        return None
    from clipav2.cost.projection import project

    led = run.ledger
    measured = [s.name for s in run.cfg.stages if s.name in led.stages and led.stages[s.name]["samples"] > 0
                and _stepping_gpu_seconds(led.stages[s.name]) > 0]
    if not measured:
        return None
    unfinished = [s.name for s in run.cfg.stages if led.stages.get(s.name, {}).get("samples", 0) < s.samples]
    current = unfinished[0] if unfinished else run.cfg.stages[-1].name
    ref = led.stages[measured[-1]]
    rate = ref["samples"] * led.gpus / _stepping_gpu_seconds(ref)  # whole-job samples/s in `measured[-1]`
    rate *= flops[measured[-1]] / flops[current]  # same machine, same MFU, other FLOPs per sample
    return project(run.cfg, led, current, rate, flops)


def build_report(run: RunData) -> dict:
    led = run.ledger
    flops = _stage_flops(run)
    peak = _peak_flops(run)
    planned = {s.name: s.samples for s in run.cfg.stages} if run.cfg else {}
    proj = _projection(run, flops)
    to_go = {r["name"]: r["cost_usd_to_go"] for r in proj["stages"]} if proj else {}
    rows = []
    for name in stage_order(run):
        entry = led.stages.get(name)
        hours = {k: (entry["gpu_seconds"][k] / 3600.0 if entry else 0.0) for k in KINDS}
        usd = sum(entry["usd"].values()) if entry else 0.0
        stepping = _stepping_gpu_seconds(entry) if entry else 0.0
        sps_gpu = entry["samples"] / stepping if entry and stepping > 0 else None
        mfu = _metrics_mean(run, name, "mfu") if peak else None  # no peak (CPU): MFU means nothing
        if mfu is None and sps_gpu and peak and name in flops:
            mfu = sps_gpu * flops[name] / peak
        rows.append({"name": name, "samples_done": entry["samples"] if entry else 0, "samples_planned": planned.get(name),
                     "steps": entry["steps"] if entry else 0, "lost_steps": entry["lost_steps"] if entry else 0,
                     "gpu_hours": hours, "gpu_hours_total": sum(hours.values()), "cost_usd": usd,
                     "samples_per_s_per_gpu": sps_gpu, "mfu": mfu,
                     "cost_usd_to_go": to_go.get(name), "projected_cost_usd": usd + to_go[name] if name in to_go else None})
    budget = run.cfg.cost.budget_usd if run.cfg else None
    lines = [budget] if budget else list(DEFAULT_BUDGET_LINES)
    report = {"run_dir": str(run.run_dir), "accelerator": led.accelerator, "gpus": led.gpus,
              "price_per_gpu_hour": led.price, "model": run.cfg.model.name if run.cfg else None,
              "stages": rows, "total_gpu_hours": led.total_gpu_seconds / 3600.0, "total_cost_usd": led.total_usd,
              "gpu_hours_by_kind": {k: sum(r["gpu_hours"][k] for r in rows) for k in KINDS},
              "projected_total_usd": proj["projected_total_usd"] if proj else None,
              "projected_total_gpu_hours": proj["projected_total_gpu_hours"] if proj else None,
              "budget_usd": budget, "budget_lines": lines, "notes": list(run.notes)}
    report["paper"] = _paper(run, report)
    return report


def _paper(run: RunData, report: dict):
    if run.cfg is None:
        return None
    paper = matching_run(run.cfg.model.name, [s.image_size for s in run.cfg.stages])
    if paper is None:
        return None
    return {"label": paper.label, "a100_hours": paper.a100_hours, "cost_usd": paper.a100_hours * PAPER_PRICE,
            "printed_usd": paper.printed_usd, "zero_shot": paper.zero_shot}
