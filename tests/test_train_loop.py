"""The whole loop in-process (single strategy, tiny model, small demo data): the files a run
leaves, every metric key, the optimizer starting fresh at each stage, and a finished run being a
no-op when started again."""
import json

import pytest
import torch

from clipav2.train.step import TrainStep
from clipav2 import exitcodes
from clipav2.config import load_config
from clipav2.train.metrics import METRIC_KEYS
from support import tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def test_two_stage_run(tmp_path, demo_data, monkeypatch, capsys):
    from clipav2.train.loop import train

    run = tmp_path / "run"
    cfg = load_config(tiny_recipe(tmp_path / "r.yaml", demo_data, run), world_size=1, check_data=True)
    seen = []  # (stage, optimizer state entries right after set-up, step count, first lr)
    real_init = TrainStep.__init__

    def spying_init(self, cfg_, stage, world, model):
        real_init(self, cfg_, stage, world, model)
        seen.append((stage.name, len(self.optimizer.state), self.count, self.lr(), self))

    monkeypatch.setattr(TrainStep, "__init__", spying_init)
    assert train(cfg) == exitcodes.OK
    out = capsys.readouterr().out

    # fresh optimizer and schedule at each stage: no state, step 0, warmup starts from 0
    assert [s[:4] for s in seen] == [("pretrain", 0, 0, 0.0), ("finetune", 0, 0, 0.0)]
    # after the finetune stage, Adam's step counter holds that stage's steps only
    ft_opt = seen[1][4].optimizer
    steps = {int(st["step"]) for st in ft_opt.state.values()}
    assert steps == {cfg.stage("finetune").steps}

    for name in ("config.yaml", "pretrain.safetensors", "finetune.safetensors", "ledger.json"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.*"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"pretrain", "finetune"}
    for r in records:
        assert set(METRIC_KEYS) <= set(r), set(METRIC_KEYS) - set(r)
        assert r["samples_seen"] == r["step"] * 16
    assert records[-1]["gpu_hours"] > 0 and records[-1]["cost_usd"] > 0
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in evals] == ["pretrain", "finetune"]
    assert all(0 <= e["top1"] <= e["top5"] <= 1 and e["n"] == 144 and e["classes"] == 36 for e in evals)
    assert "zero-shot top-1" in out and "cost:" in out

    # the consolidated weights are the fine-tuned model at the fine-tune shapes
    from clipav2.models.convert import load_model

    model = load_model(run / "finetune.safetensors")
    assert model.visual.image_size == 32 and model.text.pos_embed.shape[0] == 16

    # a finished run started again does nothing
    assert train(load_config(run / "config.yaml")) == exitcodes.OK
    assert "already done" in capsys.readouterr().out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(records)


def test_a_failing_stage_end_evaluation_keeps_the_stage_weights(tmp_path, demo_data, monkeypatch):
    import clipav2.eval.run
    from clipav2.train.loop import train

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(clipav2.eval.run, "evaluate", broken)
    run = tmp_path / "run"
    cfg = load_config(tiny_recipe(tmp_path / "r.yaml", demo_data, run), world_size=1, check_data=True)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train(cfg)
    assert (run / "pretrain.safetensors").is_file()
