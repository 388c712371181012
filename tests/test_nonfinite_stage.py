"""A stage whose final weights are not finite exits non-zero and writes no .safetensors (the next
stage would start from them). The stage starts from weights with a NaN: every step is skipped
(the skip limit is set above the stage's length), so it ends with the NaN still there."""
import torch

import clipav2
from clipav2.models.convert import save_model
from test_checkpoint_attacks import _train
from test_train_support import small_demo, tiny_recipe


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


def test_a_runaway_lr_or_weight_decay_is_refused_unless_forced_and_then_exits_77(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    for key in ("lr_base", "weight_decay"):
        run = tmp_path / key
        recipe = tiny_recipe(tmp_path / f"{key}.yaml", data, run,
                             **{"stages.pretrain.samples": 32, f"stages.pretrain.{key}": 1e30, "eval.at_stage_end": False})
        refused = _train(recipe, run)
        assert refused.returncode == 2, refused.stderr[-2000:]
        assert refused.stderr.strip().splitlines()[-1].endswith("force_optimizer_range=true to run it anyway")
        forced = _train(recipe, run, "stages.pretrain.force_optimizer_range=true")
        assert forced.returncode == 77, forced.stdout[-2000:] + forced.stderr[-2000:]
        line = next(x for x in forced.stdout.splitlines() if "[pretrain] the stage diverged" in x)
        print(key, "->", line)
        assert "not written, exit 77" in line and not (run / "pretrain.safetensors").exists()
