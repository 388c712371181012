"""Our training step, built the way `clipav2 train` builds it: the stage's model
(`train.stages.model_options`), `parallel.build_strategy`, the Strategy's
`forward_backward` per micro-batch and `step()`, uint8 images normalised on the device, the
stage's fixed number of kept image tokens. No separate benchmark model."""
from __future__ import annotations

import torch


def compile_blocks(model) -> None:
    """torch.compile each transformer block in place, before the strategy checkpoints and shards
    them (compile, then checkpoint, then shard): one small graph per block, reused by all."""
    for tower in (model.visual, model.text):
        for block in tower.blocks:
            block.compile()


def build_model(cfg, stage):
    from clipav2 import create_model
    from clipav2.train.stages import model_options

    torch.manual_seed(cfg.seed)  # as the loop: every rank builds the same initial weights
    model = create_model(cfg.model.name, image_size=stage.image_size, context_length=stage.text_len,
                         **model_options(cfg))
    if cfg.model.compile:
        compile_blocks(model)
    return model


def our_step(cfg, stage, world):
    """Build model + strategy for `stage`; return `step(micro_batches) -> StepResult`."""
    from clipav2.data import normalize
    from clipav2.loss import clip_loss
    from clipav2.models.arch import get_arch
    from clipav2.parallel import build_strategy
    from clipav2.reduce.image import keep_indices

    strategy = build_strategy(cfg, world)
    strategy.setup(build_model(cfg, stage), stage)
    grid = stage.image_size // get_arch(cfg.model.name).vision.patch_size
    gen = torch.Generator(device=world.device).manual_seed(cfg.seed + world.rank)

    def step(micro_batches):
        n = len(micro_batches)
        for i, mb in enumerate(micro_batches):
            images, ids = normalize(mb["images"]), mb["text"]
            keep = keep_indices(stage.image_reduction, (grid, grid), images.shape[0], stage.image_mask_ratio,
                                stage.grid_window, gen, world.device)
            strategy.forward_backward(lambda m: clip_loss(*m(images, ids, keep), world), i, n)
        return strategy.step()

    step.strategy = strategy
    return step
