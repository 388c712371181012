"""A stage whose final weights are not finite exits non-zero and writes no .safetensors (the next
stage would start from them). The stage starts from weights with a NaN: every step is skipped
(the skip limit is set above the stage's length), so it ends with the NaN still there."""
import pytest
import torch

import clipav2
from clipav2.config import ConfigError, load_config
from clipav2.train.faults import diverged
from clipav2.models.convert import save_model
from test_checkpoint_attacks import _train
from support import small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


def test_nonfinite_final_weights_exit_77_without_safetensors(tmp_path_factory, tmp_path):
    model = clipav2.create_model("tiny", image_size=16, context_length=8)
    with torch.no_grad():
        model.visual.blocks[0].mlp.fc1.weight[0, 0] = float("nan")
    start = tmp_path / "nan.safetensors"
    save_model(model, start)
    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", small_demo(tmp_path_factory), run,
                         **{"stages.pretrain.samples": 64, "stages.pretrain.init_from": str(start),
                            "faults.max_consecutive_skips": 100, "eval.at_stage_end": False})
    r = _train(recipe, run)
    assert r.returncode == 77, r.stderr[-3000:]
    assert "[pretrain] the stage diverged: the final weights are not finite" in r.stdout and "not written, exit 77" in r.stdout
    assert not (run / "pretrain.safetensors").exists()


@pytest.mark.parametrize("key", ["lr_base", "weight_decay"])
def test_a_runaway_lr_or_weight_decay_is_refused(key):
    with pytest.raises(ConfigError, match=f"above 1, where training diverges; set stages.s.force_optimizer_range=true"):
        load_config(None, ["stages=[{name: s, samples: 64, global_batch: 64}]", f"stages.s.{key}=1e30"])
    load_config(None, ["stages=[{name: s, samples: 64, global_batch: 64}]", f"stages.s.{key}=1e30",
                       "stages.s.force_optimizer_range=true"])
    load_config(None, ["stages=[{name: s, samples: 256, global_batch: 256}]", "stages.s.lr_base=1.0",
                       "stages.s.weight_decay=1.0"])  # peak LR 1 and decay 1: at the limit, accepted


def test_a_forced_runaway_stage_exits_77_without_its_weights(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    for key in ("lr_base",):  # (a forced weight_decay=1e30 ends the same way: the same end-of-stage check)
        run = tmp_path / key
        recipe = tiny_recipe(tmp_path / f"{key}.yaml", data, run,
                             **{"stages.pretrain.samples": 32, f"stages.pretrain.{key}": 1e30, "eval.at_stage_end": False,
                                "stages.pretrain.force_optimizer_range": True})
        forced = _train(recipe, run)
        assert forced.returncode == 77, forced.stdout[-2000:] + forced.stderr[-2000:]
        line = next(x for x in forced.stdout.splitlines() if "[pretrain] the stage diverged" in x)
        print(key, "->", line)
        assert "not written, exit 77" in line and not (run / "pretrain.safetensors").exists()


def test_a_last_loss_that_is_not_finite_is_no_result():
    state = {"w": torch.ones(3), "step": torch.tensor(3)}
    assert diverged(state, 1.5) is None
    assert diverged(state, float("nan")) == "the last logged loss is nan"
    assert "exploded" in diverged({"w": torch.full((2,), 3e6)}, 1.0)
    assert "not finite" in diverged({"w": torch.tensor([float("inf")])}, 1.0)
