"""Our training step, built as `clipav2 train` builds it: the stage's fresh model
(`train.stages.fresh_model`) and the loop's own `train.step.TrainStep` (whose engine checkpoints,
compiles and shards it as the config says; uint8 normalised on the device, the stage's kept-token
count, the global-batch loss). No separate benchmark model."""
from __future__ import annotations

import itertools


def our_step(cfg, stage, world):
    """Build model + engine for a resolved `stage`; return `step(micro_batches) -> StepResult`."""
    from clipav2.train.stages import fresh_model
    from clipav2.train.step import TrainStep

    train_step = TrainStep(cfg, stage, world, fresh_model(cfg, stage))
    counter = itertools.count()

    def step(micro_batches):
        return train_step.run(micro_batches, next(counter))

    step.train_step = train_step
    return step
