"""Our training step, built as `clipav2 train` builds it: the stage's model from the same
options (`train.stages.model_options`), `parallel.build_strategy` (which checkpoints, compiles
and shards it as the config says), and the loop's own
`train.step.StepRunner` (uint8 normalised on the device, the stage's kept-token count, the
global-batch loss). No separate benchmark model."""
from __future__ import annotations

import itertools

import torch


def build_model(cfg, stage):
    from clipav2 import create_model
    from clipav2.train.stages import model_options

    torch.manual_seed(cfg.seed)  # as the loop: every rank builds the same initial weights
    model = create_model(cfg.model.name, image_size=stage.image_size, context_length=stage.text_len,
                         **model_options(cfg))
    return model


def our_step(cfg, stage, world):
    """Build model + strategy for `stage`; return `step(micro_batches) -> StepResult`."""
    from clipav2.models.arch import get_arch
    from clipav2.parallel import build_strategy
    from clipav2.train.step import StepRunner

    strategy = build_strategy(cfg, world)
    strategy.setup(build_model(cfg, stage), stage)
    index = [s.name for s in cfg.stages].index(stage.name)
    runner = StepRunner(strategy, stage, index, cfg.seed, get_arch(cfg.model.name).vision.patch_size)
    counter = itertools.count()

    def step(micro_batches):
        return runner.run(micro_batches, next(counter))

    step.strategy = strategy
    return step
