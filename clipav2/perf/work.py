"""How much work one training sample is at a stage: the kept image tokens and the analytic
training FLOPs -- the count `clipav2 plan` and the loop's MFU use, so the three agree."""
from __future__ import annotations

from clipav2.models.arch import get_arch


def kept_image_tokens(cfg, stage) -> int:
    """Patch tokens the image tower runs at this stage (class token excluded), fixed per stage."""
    from clipav2.reduce.image import kept_tokens

    n_patches = (stage.image_size // get_arch(cfg.model.name).vision.patch_size) ** 2
    return kept_tokens(stage.image_reduction, n_patches, stage.image_mask_ratio, stage.grid_window)


def train_flops_per_sample(cfg, stage) -> int:
    from clipav2.models.flops import train_flops

    return train_flops(cfg.model.name, image_size=stage.image_size,
                       kept_image_tokens=kept_image_tokens(cfg, stage), text_len=stage.text_len)
