"""Zero-shot accuracy against what it cost (CLIPA's question): a run's evaluations from
RUN_DIR/eval.jsonl (each written with the GPU-hours and dollars spent at that point), drawn as
top-1 against dollars and against GPU-hours, beside other runs, the paper's published points
when the recipe is one of the paper's runs, the recipe's budget (only when it sets one) and the
points where the run resumed from a checkpoint. Linear axes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from clipav2.cost.paper import PAPER_PRICE, PaperRun, published_points
from clipav2.cost.run_data import load_run


@dataclass
class Curve:
    label: str
    points: list[dict]  # eval.jsonl records that carry cost_usd and top1, in order
    resumes: list[dict] = field(default_factory=list)  # {"cost_usd", "gpu_hours", "stage", "step"}
    paper: list[PaperRun] = field(default_factory=list)
    budget_usd: float | None = None
    hardware: str = ""
    notes: list[str] = field(default_factory=list)


def resume_points(metrics: list[dict]) -> list[dict]:
    """Where metrics.jsonl shows a stage's steps starting again below where they had got to: the
    run was restarted from a checkpoint there."""
    out, last = [], {}
    for r in metrics:
        stage, step = r.get("stage"), r.get("step")
        if not isinstance(step, int):
            continue
        if stage in last and step <= last[stage] and isinstance(r.get("cost_usd"), (int, float)):
            out.append({"cost_usd": r["cost_usd"], "gpu_hours": r.get("gpu_hours", 0.0), "stage": stage, "step": step})
        last[stage] = step
    return out


def load_curve(run_dir, label: str | None = None) -> Curve:
    run = load_run(run_dir)
    path = Path(run_dir) / "eval.jsonl"
    points, old = [], 0
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if isinstance(r, dict) and isinstance(r.get("top1"), float):
            if isinstance(r.get("cost_usd"), (int, float)):
                points.append(r)
            else:
                old += 1
    curve = Curve(label or Path(run_dir).name, points, resume_points(run.metrics),
                  hardware=f"{run.ledger.gpus} x {run.ledger.accelerator} at ${run.ledger.price:g}/h")
    if old:
        curve.notes.append(f"{path}: {old} evaluation(s) without a cost (written by an older version) left out")
    if not points:
        curve.notes.append(f"{run_dir}: no zero-shot evaluations with a cost in eval.jsonl")
    if run.cfg is not None:
        curve.paper = published_points(run.cfg.model.name, [s.image_size for s in run.cfg.stages])
        curve.budget_usd = run.cfg.cost.budget_usd
    return curve


def write_accuracy_plot(curves: list[Curve], path, title: str | None = None) -> Path:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(curves, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def accuracy_figure(curves: list[Curve], title: str | None = None):
    """Two panels, top-1 against dollars and against GPU-hours (a matplotlib Figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5), dpi=110)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (ax, key, xlabel) in ((axes[0], "cost_usd", "dollars spent"), (axes[1], "gpu_hours", "GPU-hours spent")):
        for i, c in enumerate(curves):
            colour = colours[i % len(colours)]
            xs = [p[key] for p in c.points]
            ys = [100 * p["top1"] for p in c.points]
            ax.plot(xs, ys, color=colour, lw=1.8, marker=".", label=f"{c.label} ({c.hardware})")
            for p in c.points:
                if p.get("when", "stage_end") == "stage_end":
                    ax.plot(p[key], 100 * p["top1"], "s", color=colour, ms=7)
                    ax.annotate(f"{p['stage']} {100 * p['top1']:.1f}%", (p[key], 100 * p["top1"]), fontsize=8,
                                textcoords="offset points", xytext=(4, -11))
            for j, r in enumerate(c.resumes):
                ax.axvline(r[key], color=colour, ls=":", lw=1, label=f"{c.label}: resumed" if j == 0 else None)
            if c.budget_usd and key == "cost_usd":
                ax.axvline(c.budget_usd, color="tab:red", lw=1.2, label=f"{c.label}: budget ${c.budget_usd:,.0f}")
        paper = {r.label: r for c in curves for r in c.paper}.values()
        for j, r in enumerate(paper):
            x = r.a100_hours * PAPER_PRICE if key == "cost_usd" else r.a100_hours
            ax.plot(x, r.zero_shot, "*", color="black", ms=11, label="paper (A100-80GB at $1.575/h)" if j == 0 else None)
            ax.annotate(f"{r.zero_shot}% {r.label.replace('CLIPA-v2 ', '')}", (x, r.zero_shot), fontsize=7,
                        textcoords="offset points", xytext=(5, 3))
        ax.set_xlabel(xlabel + (" (paper: A100-hours)" if paper and key == "gpu_hours" else ""))
        ax.set_ylabel("zero-shot top-1 (%)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or "zero-shot top-1 against cost: " + " vs ".join(c.label for c in curves))
    fig.tight_layout()
    return fig


def comparison_table(curves: list[Curve]) -> str:
    """Markdown: each run's evaluations with what they cost."""
    lines = ["| run | stage | evaluation | samples seen | GPU-hours | USD | top-1 | top-5 |", "|---|---|---|---|---|---|---|---|"]
    for c in curves:
        for p in c.points:
            lines.append(f"| {c.label} | {p['stage']} | {p.get('when', 'stage_end').replace('_', ' ')} | "
                         f"{p.get('recipe_samples', p.get('samples_seen', 0)):,} | {p['gpu_hours']:.4f} | ${p['cost_usd']:.4f} | "
                         f"{100 * p['top1']:.1f}% | {100 * p.get('top5', float('nan')):.1f}% |")
    return "\n".join(lines)
