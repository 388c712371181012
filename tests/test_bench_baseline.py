"""The open_clip baseline keeps as many image tokens as our step, whatever the strategy: open_clip
has only random patch dropout, so its probability is chosen to keep the stage's count. Checked
against open_clip's own PatchDropout."""
import pytest
import torch

from clipav2.config import load_config
from clipav2.perf.baseline import patch_dropout
from clipav2.stage import resolve


@pytest.mark.parametrize("size, extra", [
    (32, ["image_reduction=grid", "grid_window=2"]),
    (48, ["image_reduction=grid", "grid_window=3"]),
    (32, ["image_reduction=random", "image_mask_ratio=0.7"]),
    (56, ["image_reduction=block", "image_mask_ratio=0.5"]),
    (40, ["image_reduction=random", "image_mask_ratio=0.25"]),
    (32, []),
])
def test_open_clip_keeps_the_stage_count(size, extra):
    from open_clip.transformer import PatchDropout

    cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=16", "stages.s.global_batch=16",
                             f"stages.s.image_size={size}", *(f"stages.s.{e}" for e in extra)])
    stage = resolve(cfg, 0)
    dropout = PatchDropout(patch_dropout(stage)).train()
    tokens = torch.zeros(2, 1 + stage.n_patches, 4)  # the class token, then the patches
    assert dropout(tokens).shape[1] == 1 + stage.kept_image_tokens
