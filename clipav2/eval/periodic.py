"""Zero-shot evaluation while a stage trains (`eval.every_samples`, `eval.every_minutes`) and at
its end (`eval.at_stage_end`), both through `evaluate_live`.

Every rank evaluates the live model through the engine's own forward, on its share of the set
(`run.evaluate` with a world), so no rank waits at a barrier while one evaluates alone and no
weights are gathered. The RNG state is put back afterwards: an evaluation changes nothing the
training draws, so a run with periodic evaluation resumes exactly like one without.

`every_samples` counts samples of the whole recipe (the stages before this one at their planned
size), so the schedule is the same after a resume and across stages. `every_minutes` is the main
rank's clock, read at log steps and voted, so all ranks start the evaluation together.
"""
from __future__ import annotations

import time

import torch


class EngineModel:
    """`encode_image` / `encode_text` of an engine's wrapped model (DDP, FSDP2, a DeepSpeed
    engine, or single/ddp's bf16_params casting forward) through its forward, the only call those
    engines prepare the parameters for; the other input is a one-item placeholder."""

    def __init__(self, engine, image_size: int, placeholder_ids: torch.Tensor, device):
        self.wrapped, self.device = engine.model, device
        # train()/eval() go to the wrapper where it is a module, else to the plain module under
        # the bf16_params forward (a function)
        self.modes = engine.model if isinstance(engine.model, torch.nn.Module) else engine.module
        self.image = torch.zeros(1, 3, image_size, image_size, device=device)
        self.ids = placeholder_ids.to(device)

    def encode_image(self, images):
        return self.wrapped(images, self.ids)[0]

    def encode_text(self, ids):
        return self.wrapped(self.image, ids)[1]

    def eval(self):
        self.modes.eval()
        return self

    def train(self):
        self.modes.train()
        return self


def recipe_samples(cfg, stage_index: int, step: int) -> int:
    """Samples seen over the whole recipe after `step` of stage `stage_index` (earlier stages at
    their planned size): the one x-axis of the metrics and the periodic evaluation."""
    return sum(s.samples for s in cfg.stages[:stage_index]) + step * cfg.stages[stage_index].global_batch


class PeriodicEval:
    def __init__(self, cfg, stage, world):
        """`stage`: the resolved stage being trained (clipav2.stage.Stage)."""
        self.cfg, self.world = cfg, world
        self.stage_index, self.stage = stage.index, stage
        self.offset = recipe_samples(cfg, stage.index, 0)  # recipe samples before this stage
        self.every_samples, self.every_minutes = cfg.eval.every_samples, cfg.eval.every_minutes
        self.enabled = bool(cfg.data.eval) and bool(self.every_samples or self.every_minutes)
        self.last = time.monotonic()

    def recipe_samples(self, step: int) -> int:
        return recipe_samples(self.cfg, self.stage_index, step)

    def due(self, step: int, at_log_step: bool) -> bool:
        """Collective when `at_log_step` and `every_minutes` is set (every rank calls it with the
        same arguments). The stage's last step is left to the stage-end evaluation."""
        if not self.enabled or (step >= self.stage.steps and self.cfg.eval.at_stage_end):
            return False
        n = self.every_samples
        if n and self.recipe_samples(step) // n > self.recipe_samples(step - 1) // n:
            return True
        if self.every_minutes and at_log_step:
            from clipav2.parallel.env import any_rank

            late = self.world.is_main and time.monotonic() - self.last >= 60.0 * self.every_minutes
            return any_rank(self.world, late)
        return False

    def run(self, engine) -> dict:
        """Evaluate the live model (the engine's, `clipav2.parallel`) on every rank; the training
        mode and RNG state are restored."""
        try:
            return evaluate_live(engine, self.cfg, self.stage, self.world)
        finally:
            self.last = time.monotonic()


def evaluate_live(engine, cfg, stage, world) -> dict:
    """`run.evaluate` of the engine's live model through the engine's forward, every rank on its
    share of the sets (a collective under a distributed world); the training mode and the RNG
    state are put back afterwards."""
    from clipav2.eval.run import evaluate
    from clipav2.rng import rng_state, set_rng_state
    from clipav2.text import tokenize

    saved = rng_state()
    ids = tokenize([""], stage.text_len, stage.tokenizer_mode, vocab=cfg.data.vocab)
    model = EngineModel(engine, stage.image_size, ids, world.device)
    try:
        return evaluate(model, cfg, stage, world.device, world=world)
    finally:
        model.train()
        set_rng_state(saved)
