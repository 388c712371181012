"""A run stopped by the budget guard (exit 76) and resubmitted unchanged stops again before its
first step (no step trained, nothing logged); with the budget raised it resumes."""
import pytest

from test_checkpoint_attacks import _train
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def test_budget_stop_is_checked_before_the_first_step(tmp_path_factory, tmp_path):
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", small_demo(tmp_path_factory), run,
                         **{"stages.pretrain.samples": 96, "cost.budget_usd": 1e-9, "log.sample_keys": True,
                            "eval.at_stage_end": False})
    first = _train(recipe, run)
    assert first.returncode == 76, first.stderr[-3000:]
    steps = (run / "samples" / "rank_0.txt").read_text()
    metrics = (run / "metrics.jsonl").read_text()
    assert [line.split()[1] for line in steps.splitlines()] == ["0", "1"]  # stopped at the first log step

    again = _train(recipe, run)
    assert again.returncode == 76, again.stderr[-3000:]
    assert "not starting" in again.stderr and "raise cost.budget_usd" in again.stderr
    assert (run / "samples" / "rank_0.txt").read_text() == steps  # no step trained
    assert (run / "metrics.jsonl").read_text() == metrics

    raised = _train(recipe, run, "cost.budget_usd=1000")
    assert raised.returncode == 0, raised.stderr[-3000:]
    assert "resuming at step 2" in raised.stdout and (run / "pretrain.safetensors").is_file()
