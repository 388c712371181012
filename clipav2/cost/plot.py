"""The budget report's figure: cumulative dollars against samples seen, with the plan, the
projection, the recipe's budget (when it sets one) and the stage boundaries; linear axes.
(Accuracy against dollars: cost/accuracy.py.)"""
from __future__ import annotations

from pathlib import Path

from clipav2.cost.run_data import RunData


def stage_offsets(run: RunData, order: list[str]) -> dict:
    """Samples seen before each stage starts: the recipe's planned samples, else what was done."""
    planned = {s.name: s.samples for s in run.cfg.stages} if run.cfg else {}
    offsets, total = {}, 0
    for name in order:
        offsets[name] = total
        total += planned.get(name) or run.ledger.stages.get(name, {}).get("samples", 0)
    offsets["_end"] = total
    return offsets


def measured_curve(run: RunData, order: list[str], offsets: dict) -> list[tuple[float, float]]:
    """(global samples, cumulative USD) from metrics.jsonl (whose samples_seen may count from 0
    in each stage or run through the whole recipe), ending at the ledger's current total."""
    per_stage = _counts_per_stage(run.metrics, order)
    points = [(0.0, 0.0)]
    for r in run.metrics:
        if isinstance(r.get("samples_seen"), (int, float)) and isinstance(r.get("cost_usd"), (int, float)):
            x = r["samples_seen"] + (offsets.get(r["stage"], 0) if per_stage else 0)
            points.append((float(x), float(r["cost_usd"])))
    done = [n for n in order if run.ledger.stages.get(n, {}).get("samples", 0) > 0]
    if not run.metrics:  # the ledger alone: one point at the end of each stage's progress
        cumulative = 0.0
        for name in order:
            cumulative += sum(run.ledger.stages.get(name, {}).get("usd", {}).values())
            if name in done:
                points.append((offsets[name] + run.ledger.stages[name]["samples"], cumulative))
    if done:
        last = done[-1]
        points.append((offsets[last] + run.ledger.stages[last]["samples"], run.ledger.total_usd))
    return points


def _counts_per_stage(rows: list[dict], order: list[str]) -> bool:
    """True when samples_seen restarts in each stage (a later stage starts below where the
    previous one ended)."""
    last_max = {}
    for r in rows:
        if isinstance(r.get("samples_seen"), (int, float)):
            last_max[r["stage"]] = max(last_max.get(r["stage"], 0), r["samples_seen"])
    firsts = {}
    for r in rows:
        if isinstance(r.get("samples_seen"), (int, float)):
            firsts.setdefault(r["stage"], r["samples_seen"])
    seen = [n for n in order if n in last_max]
    return any(firsts[b] < last_max[a] for a, b in zip(seen, seen[1:])) or len(seen) <= 1


def plan_curve(run: RunData, order: list[str], offsets: dict) -> list[tuple[float, float]] | None:
    """The plan at the first stage's measured speed (training FLOPs only, no overheads)."""
    if run.cfg is None:
        return None
    first = run.ledger.stages.get(run.cfg.stages[0].name)
    stepping = first and first["gpu_seconds"]["train"] + first["gpu_seconds"]["data_wait"]
    if not stepping or not first["samples"]:
        return None
    from clipav2.cost.plan import Hardware, plan
    from clipav2.accelerators import Accelerator

    hw = Hardware(Accelerator(run.ledger.accelerator, run.ledger.price, None, "run"), run.ledger.gpus,
                  run.ledger.price, samples_per_s_per_gpu=first["samples"] / stepping)
    points, usd = [(0.0, 0.0)], 0.0
    for s in plan(run.cfg, hw)["stages"]:
        usd += s["cost_usd"]
        points.append((offsets[s["name"]] + s["samples"], usd))
    return points


def write_plot(run: RunData, report: dict, path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [s["name"] for s in report["stages"]]
    offsets = stage_offsets(run, order)
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    shown = measured = measured_curve(run, order, offsets)
    label = "spent (metrics.jsonl + ledger)" if run.metrics else "spent (ledger, at stage ends)"
    ax.plot(*zip(*shown), color="tab:blue", lw=2, marker="." if len(shown) < 40 else None, label=label)
    planned = plan_curve(run, order, offsets)
    if planned:
        ax.plot(*zip(*planned), color="tab:gray", ls="--", lw=1.5, label="plan (first stage's measured speed)")
    if report["projected_total_usd"] is not None and run.cfg is not None:
        ax.plot([measured[-1][0], offsets["_end"]], [measured[-1][1], report["projected_total_usd"]],
                color="tab:orange", ls=":", lw=2, label=f"projection (${report['projected_total_usd']:,.2f})")
    if report["budget_usd"]:
        ax.axhline(report["budget_usd"], color="tab:red", lw=1.2, label=f"budget ${report['budget_usd']:,.0f}")
    for name in order[1:]:
        ax.axvline(offsets[name], color="black", lw=0.8, alpha=0.4)
    for name in order:
        ax.text(offsets[name], 0.02, f" {name}", transform=ax.get_xaxis_transform(), va="bottom", fontsize=8, alpha=0.7)
    ax.set_xlabel("samples seen (all stages)")
    ax.set_ylabel(f"cumulative cost (USD, {run.ledger.gpus} x {run.ledger.accelerator} at ${run.ledger.price:.3f}/GPU-h)")
    ax.set_title(f"Cost of {run.run_dir.name}: ${report['total_cost_usd']:,.2f} spent")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.92), fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
