"""The resolved stage (clipav2.stage): its numbers against closed forms, the fitted micro-batch,
and a two-stage run that builds each stage's model from the previous stage's weights exactly once
(the stage-end evaluation and weights file use the architecture the stage resolved)."""
import math

import pytest

import clipav2.models.convert as convert
from clipav2 import exitcodes
from clipav2.config import ConfigError, load_config
from clipav2.models.flops import train_flops
from clipav2.stage import resolve
from support import small_demo, tiny_recipe


@pytest.mark.parametrize("recipe", ["configs/h14.yaml", "configs/bigg14.yaml", "configs/demo.yaml"])
def test_numbers_of_every_stage(recipe):
    cfg = load_config(recipe, ["parallel.micro_batch=64"])
    for i, s in enumerate(cfg.stages):
        st = resolve(cfg, i, world_size=2)
        assert st.index == i and st.name == s.name and st.samples == s.samples
        patch = st.arch.vision.patch_size
        side = s.image_size // patch
        assert st.grid == (side, side) and (st.arch.vision.image_size, st.arch.text.context_length) == (s.image_size, s.text_len)
        if s.image_reduction == "resize":
            kept = side * side
        elif s.image_reduction == "grid":
            kept = side * side // s.grid_window**2
        else:
            kept = max(1, math.floor(side * side * (1 - s.image_mask_ratio) + 1e-9))
        assert st.kept_image_tokens == kept
        assert st.micro_batch == (s.micro_batch or 64) and st.grad_accum == s.global_batch // (2 * st.micro_batch)
        assert st.train_flops_per_sample == train_flops(cfg.model.name, s.image_size, kept, s.text_len)


def test_auto_is_the_per_rank_batch_until_fitted():
    cfg = load_config(None, ["parallel.micro_batch=auto", "stages=[{name: s}]", "stages.s.samples=96", "stages.s.global_batch=48"])
    st = resolve(cfg, 0, world_size=2)
    assert (st.auto_micro_batch, st.micro_batch, st.grad_accum) == (True, 24, 1)
    fitted = st.with_micro_batch(cfg, 8)
    assert (fitted.auto_micro_batch, fitted.micro_batch, fitted.grad_accum) == (False, 8, 3)
    assert cfg.stages[0].micro_batch is None  # the config is not changed by the fit


def test_a_split_that_does_not_make_the_global_batch_is_refused():
    cfg = load_config(None, ["parallel.strategy=ddp", "parallel.micro_batch=16", "stages=[{name: s}]", "stages.s.samples=96", "stages.s.global_batch=48"])
    with pytest.raises(ConfigError, match="stages.s.global_batch: 48 is not divisible by world size 2 x micro_batch 16"):
        cfg.validate(2)


@pytest.mark.slow
def test_each_stage_reads_the_previous_weights_once(tmp_path_factory, tmp_path, monkeypatch):
    from clipav2.train.loop import train

    data = small_demo(tmp_path_factory)
    recipe = tiny_recipe(tmp_path / "r.yaml", data, tmp_path / "run", **{"eval.at_stage_end": False})
    cfg = load_config(recipe, world_size=1, check_data=True)
    reads = []
    real = convert.load_file
    monkeypatch.setattr(convert, "load_file", lambda path, *a, **k: reads.append(str(path)) or real(path, *a, **k))
    assert train(cfg) == exitcodes.OK
    assert reads == [str(tmp_path / "run" / "pretrain.safetensors")]
    saved = convert.read_metadata(tmp_path / "run" / "finetune.safetensors")
    assert saved["arch"] == "tiny" and (saved["options"]["image_size"], saved["options"]["context_length"]) == (32, 16)
