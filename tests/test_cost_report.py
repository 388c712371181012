"""`clipav2 budget` on a fabricated run directory: the Markdown's per-stage GPU-hours add up to
the ledger, the projection follows the closed form, the plot and HTML are written, a copied run
without checkpoints or metrics works, and bad input is named."""
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from clipav2.cli import main
from clipav2.config import load_config, save_config
from clipav2.cost.ledger import FORMAT_VERSION, Ledger
from clipav2.cost.plan import stage_flops

ROOT = Path(__file__).resolve().parents[1]
RECIPE = """model: {name: tiny}
cost: {budget_usd: 50}
stages:
  - {name: pretrain, image_size: 16, text_len: 8, text_reduction: syntax, samples: 64000, global_batch: 64}
  - {name: finetune, image_size: 32, image_reduction: random, image_mask_ratio: 0.5, text_len: 16, samples: 16000,
     global_batch: 64, eval_transform: resize}
"""


class FakeClock:
    now = 0.0

    def __call__(self):
        return self.now


def fabricate(run_dir: Path, finetune_done=8000, with_metrics=True, with_config=True, gpus=8, price=1.575):
    """A run that finished pre-training and is half-way through fine-tuning."""
    (run_dir / "r.yaml").parent.mkdir(parents=True, exist_ok=True)
    (run_dir / "r.yaml").write_text(RECIPE)
    cfg = load_config(run_dir / "r.yaml")
    if with_config:
        save_config(cfg, run_dir)
    clock = FakeClock()
    led = Ledger(gpus, price, clock, accelerator="a100-80gb")
    rows = []
    led.add("pretrain", "startup", 60)
    for stage, done, step_s in (("pretrain", 64000, 2.0), ("finetune", finetune_done, 6.0)):
        for step in range(1, done // 64 + 1):
            led.add(stage, "data_wait", 0.2 * step_s)
            led.add(stage, "train", step_s)
            led.set_progress(stage, step, step * 64)
            if step % 100 == 0:
                rows.append({"stage": stage, "step": step, "samples_seen": step * 64, "loss": 1.0, "lr": 1e-3,
                             "samples_per_s": 64 / (1.2 * step_s), "samples_per_s_per_gpu": 8 / (1.2 * step_s),
                             "mfu": None, "gpu_hours": led.total_gpu_seconds / 3600, "cost_usd": led.total_usd})
            if step % 500 == 0:
                led.add(stage, "checkpoint", 30)
        led.add(stage, "eval", 120)
    led.write(run_dir)
    if with_metrics:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"cut by a cra')
    return cfg, led


def _stage_rows(md: str) -> dict:
    section = md.split("## Stages")[1].split("##")[0]
    lines = [l for l in section.splitlines() if l.startswith("| ")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def _num(text):
    return float(re.sub(r"[$,%]", "", text))


def test_report_adds_up_and_projects_by_the_closed_form(tmp_path):
    cfg, led = fabricate(tmp_path / "run")
    out, png, page = tmp_path / "r.md", tmp_path / "r.png", tmp_path / "r.html"
    assert main(["budget", str(tmp_path / "run"), "--out", str(out), "--plot", str(png), "--html", str(page)]) == 0
    md = out.read_text()
    rows = _stage_rows(md)
    per_stage = _num(rows["pretrain"]["GPU-h total"]) + _num(rows["finetune"]["GPU-h total"])
    assert per_stage == pytest.approx(led.total_gpu_seconds / 3600, abs=2e-3)
    assert _num(rows["**total**"]["GPU-h total"]) == pytest.approx(led.total_gpu_seconds / 3600, abs=1e-3)
    assert _num(rows["**total**"]["USD"]) == pytest.approx(led.total_usd, abs=0.01)
    assert (rows["pretrain"]["samples done"], rows["finetune"]["samples done"]) == ("64,000", "8,000")
    assert _num(rows["pretrain"]["samples/s/GPU"]) == pytest.approx(64 / (1.2 * 2.0) / 8, abs=0.05)
    # MFU from the FLOP count: samples/s/GPU x FLOPs per sample / A100 peak
    mfu = 64 / (1.2 * 2.0) / 8 * stage_flops(cfg, 0) / 312e12
    assert _num(rows["pretrain"]["MFU"]) == pytest.approx(100 * mfu, abs=0.05)
    # to finish: 8,000 fine-tune samples at the measured fine-tune speed, plus eval/checkpoint overhead
    g = {k: sum(s["gpu_seconds"][k] for s in led.stages.values()) for k in ("train", "data_wait", "eval", "checkpoint")}
    overhead = 1 + (g["eval"] + g["checkpoint"]) / (g["train"] + g["data_wait"])
    to_go = 8000 / 64 * 1.2 * 6.0 * overhead * 8 / 3600 * 1.575
    assert _num(rows["finetune"]["USD to finish"]) == pytest.approx(to_go, abs=0.01)
    assert _num(rows["**total**"]["USD projected"]) == pytest.approx(led.total_usd + to_go, abs=0.02)
    assert "$50" in md.split("## Budget")[1]  # the recipe's budget line
    assert "skipped 1 unreadable line" in md
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24])[0] >= 800
    assert "data:image/png;base64," in page.read_text() and "<table>" in page.read_text()


def test_projection_scales_an_unstarted_stage_by_its_flops(tmp_path):
    cfg, led = fabricate(tmp_path / "run", finetune_done=0)
    assert main(["budget", str(tmp_path / "run"), "--out", str(tmp_path / "r.md")]) == 0
    rows = _stage_rows((tmp_path / "r.md").read_text())
    ratio = stage_flops(cfg, 1) / stage_flops(cfg, 0)
    g = {k: sum(s["gpu_seconds"][k] for s in led.stages.values()) for k in ("train", "data_wait", "eval", "checkpoint")}
    overhead = 1 + (g["eval"] + g["checkpoint"]) / (g["train"] + g["data_wait"])
    to_go = 16000 / 64 * 1.2 * 2.0 * ratio * overhead * 8 / 3600 * 1.575
    assert _num(rows["finetune"]["USD to finish"]) == pytest.approx(to_go, abs=0.01)


def test_a_finished_run_projects_what_it_spent(tmp_path):
    _, led = fabricate(tmp_path / "run", finetune_done=16000)
    assert main(["budget", str(tmp_path / "run"), "--out", str(tmp_path / "r.md")]) == 0
    rows = _stage_rows((tmp_path / "r.md").read_text())
    assert _num(rows["**total**"]["USD projected"]) == pytest.approx(led.total_usd, abs=0.01)


def test_a_copied_run_without_metrics_or_config_still_reports(tmp_path, capsys):
    _, led = fabricate(tmp_path / "run", with_metrics=False, with_config=False)
    (tmp_path / "run" / "r.yaml").unlink()
    assert main(["budget", str(tmp_path / "run"), "--plot", str(tmp_path / "p.png")]) == 0
    md = capsys.readouterr().out
    assert "no config.yaml" in md and "no metrics.jsonl" in md and "$10,000" in md and "$15,000" in md
    assert (tmp_path / "p.png").stat().st_size > 10_000


def test_reprice_and_the_script_wrapper(tmp_path):
    _, led = fabricate(tmp_path / "run")
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "budget_report.py"), str(tmp_path / "run"),
                             "--price", "3.0", "--out", str(tmp_path / "r.md")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = _stage_rows((tmp_path / "r.md").read_text())
    assert _num(rows["**total**"]["USD"]) == pytest.approx(led.total_gpu_seconds / 3600 * 3.0, abs=0.01)


@pytest.mark.parametrize("setup, argv, message", [
    ("empty", [], "no ledger"),
    ("newer", [], "newer than this clipav2"),
    ("ok", ["--price", "-2"], "must be a finite number >= 0"),
    ("ok", ["--price", "cheap"], "'cheap' is not a number"),
    ("missing", [], "no such run directory"),
])
def test_bad_input_is_named(tmp_path, capsys, setup, argv, message):
    run = tmp_path / "run"
    if setup != "missing":
        run.mkdir()
    if setup == "newer":
        (run / "ledger.json").write_text(json.dumps({"format": FORMAT_VERSION + 1, "stages": {}}))
    if setup == "ok":
        fabricate(run)
    assert main(["budget", str(run), *argv]) == 2
    assert message in capsys.readouterr().err
