"""Stage transitions: weights and temperature carried, image position embedding recomputed,
text position table resized 8 -> 32 by linear interpolation, optimizer and schedule fresh."""
import numpy as np
import pytest
import torch

from clipav2.config import load_config
from clipav2.models.convert import save_model
from clipav2.train.stages import _fresh, build_stage_model, stage_weights

RECIPE = """\
model: {name: demo}
run_dir: RUN
stages:
  - {name: pretrain, image_size: 32, text_len: 8, text_reduction: syntax, samples: 256, global_batch: 128}
  - {name: finetune, image_size: 64, text_len: 32, samples: 256, global_batch: 128, image_reduction: random, image_mask_ratio: 0.25}
"""


def linear_resample(table: np.ndarray, length: int) -> np.ndarray:
    """Half-pixel-centred linear interpolation along positions (jax.image.resize 'linear' when
    upsampling), written out independently of torch."""
    n = table.shape[0]
    src = (np.arange(length) + 0.5) * n / length - 0.5
    src = np.clip(src, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = (src - lo)[:, None]
    return table[lo] * (1 - w) + table[hi] * w


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.replace("RUN", str(tmp_path)))
    return load_config(path)


def test_transition_carries_weights_and_resizes_tables(cfg, tmp_path):
    before = build_stage_model(cfg, 0, tmp_path)
    assert before.text.pos_embed.shape[0] == 8 and before.visual.image_size == 32
    with torch.no_grad():
        before.logit_scale.fill_(3.21)  # a trained temperature, not the initial log(1/0.07)
    save_model(before, stage_weights(tmp_path, "pretrain"), stage="pretrain")

    after = build_stage_model(cfg, 1, tmp_path)

    expected = linear_resample(before.text.pos_embed.detach().double().numpy(), 32)
    np.testing.assert_allclose(after.text.pos_embed.detach().double().numpy(), expected, atol=1e-6)
    assert after.logit_scale.item() == pytest.approx(3.21)
    # the image position embedding is the fixed sin-cos one of the new 8x8 grid
    fresh = _fresh(cfg, 64, 32)
    torch.testing.assert_close(after.visual.pos_embed, fresh.visual.pos_embed)
    assert after.visual.image_size == 64
    # every other weight is carried unchanged
    a, b = before.state_dict(), after.state_dict()
    for key in a:
        if key not in ("text.pos_embed",) and "pos_embed" not in key:
            torch.testing.assert_close(a[key], b[key], msg=key)


def test_later_stage_needs_the_previous_weights(cfg, tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrain"):
        build_stage_model(cfg, 1, tmp_path)
