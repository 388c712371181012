"""Stage transitions (clipa_jax/configs/model_h/unmask_tuning_*.py start from the previous stage's
weights, `masked_init`): the weights and the temperature are carried, the image position
embedding is recomputed for the new resolution (sin-cos) or resampled (a learned table), the text
position table is resized linearly (8 -> 32).
The optimizer, LR schedule and step start fresh because every stage builds its own TrainStep.

Every stage after the first starts from the previous stage's consolidated weights on disk
(RUN_DIR/<stage>.safetensors), never from the live sharded model: the same path serves a fresh
run, a resumed one and a run that starts mid-recipe with `--stage`.
"""
from __future__ import annotations

from pathlib import Path

import torch


def stage_weights(run_dir, stage_name: str) -> Path:
    """Where a finished stage's full fp32 weights live."""
    return Path(run_dir) / f"{stage_name}.safetensors"


def enter_stage(model, stage) -> None:
    """Resize the model for `stage`; the weights (temperature included) stay as they are."""
    if stage.pos_embed == "learned":  # before the resize, so the table is resampled, not recomputed
        model.make_pos_embed_learnable()
    model.set_image_size(stage.image_size)
    model.set_text_len(stage.text_len)
    with torch.no_grad():  # a resampled table may be a strided view; FSDP2 shards contiguous tensors only
        for p in model.parameters():
            if not p.is_contiguous():
                p.data = p.data.contiguous()


def _fresh(cfg, image_size: int, text_len: int):
    from clipav2 import create_model

    torch.manual_seed(cfg.seed)  # every rank builds the same initial weights (FSDP2 does not broadcast)
    return create_model(cfg.model.name, image_size=image_size, context_length=text_len, **cfg.model.options())


def fresh_model(cfg, stage):
    """A freshly initialised model (from `seed`), resized for `stage`: the first stage's start,
    and what the benchmark times."""
    model = _fresh(cfg, stage.image_size, stage.text_len)
    enter_stage(model, stage)
    return model


def _carried(path, cfg, stage):
    """A model rebuilt from a weights file (ours, with its stored numerics: sin-cos or learned
    table, GELU, LayerNorm eps; or an open_clip checkpoint of `model.name`), resized for `stage`.
    The attention backend is a run-time choice and comes from the config."""
    from clipav2.models.convert import load_model

    m = cfg.model
    model = load_model(path, name=m.name, attention=m.attention)
    enter_stage(model, stage)
    return model


def build_stage_model(cfg, index: int, run_dir):
    """The model a stage starts from, already resized for it (a resumed stage then overwrites the
    weights from its checkpoint, the architecture being the same):

    - `init_from`: that checkpoint (ours or open_clip's), carried into this stage;
    - a later stage: the previous stage's RUN_DIR/<stage>.safetensors;
    - the first stage: fresh initialisation from `seed`."""
    stage = cfg.stages[index]
    if stage.init_from:
        return _carried(stage.init_from, cfg, stage)
    if index > 0:
        prev = cfg.stages[index - 1]
        path = stage_weights(run_dir, prev.name)
        if not path.is_file():
            raise FileNotFoundError(f"stage {stage.name!r} starts from stage {prev.name!r}, but {path} is missing: run that stage first")
        return _carried(path, cfg, stage)
    return fresh_model(cfg, stage)
