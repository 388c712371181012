"""Pluggable parallelism: `build_engine` applies the techniques (`clipav2.parallel.apply`) to a
plain model and returns the engine whose primitives the training step (`clipav2.train.step`)
drives, with the optimizer the step's factory built over the wrapped parameters (see
`clipav2.parallel.base.Engine` and docs/engine.md). Nothing here knows of stages or configs:

    world = init_distributed(cfg.parallel)
    engine, optimizer = build_engine(cfg.parallel, cfg.model, world, model, make_optimizer, shape)
"""
from __future__ import annotations

import importlib

from clipav2.lazy import exports

# the engines' shared modules import torch; they load on first use, so the config's checks and
# `clipav2 bench --help` read STRATEGIES without it
__getattr__, _lazy = exports(__name__, {
    "clipav2.parallel.base": ["Engine", "StepShape"],
    "clipav2.parallel.env": ["World", "init_distributed"],
})
__all__ = ["STRATEGIES", "build_engine", *_lazy]

# parallel.strategy -> (module, class); the engine's module is imported only when chosen
STRATEGIES = {
    "single": ("clipav2.parallel.native", "SingleEngine"),
    "ddp": ("clipav2.parallel.native", "DDPEngine"),
    "fsdp": ("clipav2.parallel.fsdp", "FSDPEngine"),
    "deepspeed": ("clipav2.parallel.deepspeed_engine", "DeepSpeedEngine"),
}


def build_engine(parallel, model_settings, world, model, make_optimizer, shape):
    """Apply the techniques to `model` (built on the CPU, fp32) in their fixed order, wrap it in
    the engine `parallel.strategy` names -> (engine, optimizer). `parallel` and `model_settings`
    are the config's `parallel` and `model` sections (read: strategy, precision, checkpointing,
    compile, ...); `make_optimizer(module, fused)` builds the optimizer; `shape` is a
    `base.StepShape`."""
    from clipav2.parallel.apply import apply_ac, apply_compile
    from clipav2.parallel.base import resolve_compile

    module, name = STRATEGIES[parallel.strategy]
    engine = getattr(importlib.import_module(module), name)(parallel, world)
    apply_ac(model, model_settings.checkpointing)
    engine.compiled = resolve_compile(model_settings, world)
    if engine.compiled:
        apply_compile(model)
    optimizer = engine.wrap(model, make_optimizer, shape)
    return engine, optimizer
