"""Accuracy against cost: the curve read from a run directory (evaluations with their dollars,
resume points from metrics.jsonl), the figure (linear axes, the paper's H/14 points only for an
H/14 recipe, a budget line only when the recipe sets one), `clipav2 budget` writing it beside the
cost plot, and `clipav2 compare` over run directories and over a recipe it trains first."""
import json
from pathlib import Path

import pytest

from clipav2.cli import main
from clipav2.config import load_config, save_config
from clipav2.cost.accuracy import accuracy_figure, load_curve
from clipav2.cost.ledger import Ledger
from support import small_demo, tiny_recipe

ROOT = Path(__file__).resolve().parents[1]


def fabricate(run_dir: Path, recipe: str, evals, metrics=()):
    """A run directory: config, ledger, eval.jsonl (stage, when, top1, usd) and metrics rows."""
    run_dir.mkdir(parents=True)
    save_config(load_config(ROOT / recipe), run_dir)
    led = Ledger(8, 1.575, accelerator="a100-80gb")
    led.add("pretrain", "train", 3600.0)
    led.write(run_dir)
    rows = [{"stage": st, "step": i + 1, "when": when, "top1": top1, "top5": min(1.0, top1 + 0.2), "n": 100,
             "cost_usd": usd, "gpu_hours": usd / 1.575, "recipe_samples": 1000 * (i + 1)}
            for i, (st, when, top1, usd) in enumerate(evals)]
    (run_dir / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return run_dir


def _metric(stage, step, usd):
    return {"stage": stage, "step": step, "samples_seen": step * 10, "cost_usd": usd, "gpu_hours": usd / 1.575}


@pytest.fixture
def h14(tmp_path):
    # pre-training steps 10, 20, then a restart from the step-10 checkpoint: 10 again at $6,000
    metrics = [_metric("pretrain", 10, 4000.0), _metric("pretrain", 20, 5000.0), _metric("pretrain", 10, 6000.0),
               _metric("pretrain", 30, 8000.0)]
    evals = [("pretrain", "periodic", 0.5, 3000.0), ("pretrain", "stage_end", 0.74, 9500.0),
             ("finetune224", "stage_end", 0.80, 12000.0)]
    return fabricate(tmp_path / "h14", "configs/h14.yaml", evals, metrics)


def test_curve_of_a_run(h14):
    curve = load_curve(h14)
    assert [(p["stage"], p["top1"], p["cost_usd"]) for p in curve.points] == [
        ("pretrain", 0.5, 3000.0), ("pretrain", 0.74, 9500.0), ("finetune224", 0.80, 12000.0)]
    assert [(r["stage"], r["step"], r["cost_usd"]) for r in curve.resumes] == [("pretrain", 10, 6000.0)]
    assert [r.zero_shot for r in curve.paper] == [81.1, 81.5, 81.8, 79.1]  # by A100-hours: 5,920, 7,776, 8,640, 8,640
    assert curve.budget_usd == 15000


def _lines(ax):
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}


def test_figure_has_paper_points_budget_and_resumes_on_linear_axes(h14):
    fig = accuracy_figure([load_curve(h14)])
    usd, hours = fig.axes
    assert usd.get_xscale() == usd.get_yscale() == hours.get_xscale() == "linear"
    lines = _lines(usd)
    assert lines["h14: budget $15,000"][0] == [15000, 15000]
    assert lines["h14: resumed"][0] == [6000.0, 6000.0]
    stars = [(line.get_xdata()[0], line.get_ydata()[0]) for line in usd.get_lines() if line.get_marker() == "*"]
    assert sorted(stars) == sorted([(5920 * 1.575, 81.1), (7776 * 1.575, 81.5), (8640 * 1.575, 81.8), (8640 * 1.575, 79.1)])
    hour_stars = [line.get_xdata()[0] for line in hours.get_lines() if line.get_marker() == "*"]
    assert sorted(hour_stars) == [5920, 7776, 8640, 8640]
    run = [v for k, v in lines.items() if k.startswith("h14 (")][0]
    assert run == ([3000.0, 9500.0, 12000.0], [50.0, 74.0, 80.0])


def test_demo_recipe_draws_no_paper_points_and_no_budget(tmp_path):
    run = fabricate(tmp_path / "demo", "configs/demo.yaml", [("pretrain", "stage_end", 0.3, 0.2), ("finetune", "stage_end", 0.4, 0.4)])
    curve = load_curve(run)
    assert curve.paper == [] and curve.budget_usd is None
    fig = accuracy_figure([curve])
    for ax in fig.axes:
        assert not any("budget" in k for k in _lines(ax)) and not any(l.get_marker() == "*" for l in ax.get_lines())


def test_budget_writes_the_accuracy_plot_beside_the_cost_plot(h14, tmp_path):
    out, png = tmp_path / "r.md", tmp_path / "r.png"
    assert main(["budget", str(h14), "--out", str(out), "--plot", str(png)]) == 0
    assert (tmp_path / "r_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![zero-shot top-1 against cost](r_accuracy.png)" in out.read_text()


@pytest.mark.slow
def test_compare_trains_a_recipe_then_draws_both(tmp_path, tmp_path_factory, capsys):
    data = small_demo(tmp_path_factory)
    other = fabricate(tmp_path / "other", "configs/demo.yaml", [("pretrain", "stage_end", 0.3, 0.2)])
    recipe = tiny_recipe(tmp_path / "tiny.yaml", data, tmp_path / "tiny_run")
    png, md = tmp_path / "cmp.png", tmp_path / "cmp.md"
    assert main(["compare", str(recipe), str(other), "stages.finetune.samples=32", "--plot", str(png), "--out", str(md)]) == 0
    assert (tmp_path / "tiny_run" / "finetune.safetensors").is_file()
    evals = [json.loads(line) for line in (tmp_path / "tiny_run" / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["pretrain", "finetune"] and evals[-1]["recipe_samples"] == 64 + 32
    table = md.read_text()
    assert table.count("| tiny_run |") == 2 and table.count("| other |") == 1
    assert f"{100 * evals[-1]['top1']:.1f}%" in table and png.stat().st_size > 10_000
    assert main(["compare", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
