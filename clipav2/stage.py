"""A recipe stage resolved once against the model and the world: the per-stage numbers the loop,
the step, the engines, the loader, the memory model, the plan and the bench read.

    stage = resolve(cfg, 0, world_size=8)                  # from the config alone (plan, bench)
    stage = resolve(cfg, 0, world_size=8, arch=model.arch)  # the loop: the model the stage built
    stage.micro_batch, stage.grad_accum, stage.grid, stage.kept_image_tokens, stage.train_flops_per_sample
    stage.name, stage.samples, stage.peak_lr, ...          # the StageConfig's own fields, read through

`micro_batch: auto` stands for the whole per-rank batch until `with_micro_batch` sets the fitted
value (clipav2.micro_batch). Without a world size (the plan) micro_batch and grad_accum are None.
A stage is resolved once, by its index, and passed on as a `Stage`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from clipav2.config import Config, StageConfig
from clipav2.models.arch import ClipArch, get_arch


@dataclass(frozen=True)
class Stage:
    config: StageConfig
    index: int
    arch: ClipArch  # the model at this stage's image size and text length
    world_size: int | None
    micro_batch: int | None  # per rank and micro-step
    grad_accum: int | None  # micro-steps per optimizer step
    auto_micro_batch: bool  # micro_batch: auto, to be fitted to the device at the stage's start
    grid: tuple[int, int]  # the patch grid (H, W)
    kept_image_tokens: int  # patch tokens a step keeps (class token excluded)
    train_flops_per_sample: int  # 3 x forward at the kept tokens and the stage's text length
    recompute_flops_per_sample: int  # what model.checkpointing's recomputation adds to the step

    def __getattr__(self, name):  # the StageConfig's fields (name, samples, steps, peak_lr, ...)
        if name == "config":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.config, name)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def with_micro_batch(self, cfg: Config, micro: int) -> Stage:
        """This stage at a fitted micro-batch (gradient accumulation recomputed)."""
        micro, accum = cfg.batch_split(self.config, self.world_size, micro)
        return dataclasses.replace(self, micro_batch=micro, grad_accum=accum, auto_micro_batch=False)


def stage_arch(cfg: Config, stage: StageConfig) -> ClipArch:
    """The configured model at the stage's shapes (the loop passes the model's own instead)."""
    options = cfg.model.options()
    if stage.pos_embed == "learned":
        options["pos_embed"] = "learned"
    return get_arch(cfg.model.name, image_size=stage.image_size, context_length=stage.text_len, **options)


def resolve(cfg: Config, index: int, world_size: int | None = None, arch: ClipArch | None = None) -> Stage:
    """Stage number `index` of `cfg` resolved for `world_size` ranks."""
    from clipav2.models.flops import recompute_flops, train_flops
    from clipav2.reduce import image

    s = cfg.stages[index]
    arch = arch or stage_arch(cfg, s)
    side = s.image_size // arch.vision.patch_size
    grid = (side, side)
    kept = image.kept_on_grid(s.image_reduction, grid, s.image_mask_ratio, s.grid_window)
    micro, accum = cfg.batch_split(s, world_size) if world_size is not None else (None, None)
    return Stage(config=s, index=index, arch=arch, world_size=world_size, micro_batch=micro, grad_accum=accum,
                 auto_micro_batch=cfg.micro_batch_setting(s) == "auto", grid=grid, kept_image_tokens=kept,
                 train_flops_per_sample=train_flops(arch, s.image_size, kept, s.text_len),
                 recompute_flops_per_sample=recompute_flops(arch, cfg.model.checkpointing, s.image_size, kept, s.text_len))
