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


@pytest.mark.parametrize("name", ["ViT-B-16-CL16", "ViT-L-16-CL8-Syntax-GAP", "tiny"])
def test_the_baseline_model_is_ours_in_open_clip(name):
    """CLIPA v1 rows keep ln_pre, exact GELU and the causal BPE tower in the baseline too (open_clip
    stores the position tables as parameters: compare with learned ones)."""
    from clipav2.models.arch import get_arch
    from clipav2.models.flops import count_params
    from clipav2.perf.baseline import build_open_clip

    arch = get_arch(name, pos_embed="learned")
    with torch.device("meta"):
        model = build_open_clip(arch, arch.vision.image_size, arch.text.context_length, 0.0, torch.device("meta"))
    assert sum(p.numel() for p in model.parameters()) == count_params(arch)["total"]
    block = model.visual.transformer.resblocks[0]
    assert block.mlp.gelu.approximate == ("tanh" if arch.gelu == "tanh" else "none")
    assert block.ln_1.eps == arch.ln_eps
    assert (model.attn_mask is not None) == arch.text.causal
