"""Pluggable parallelism: `build_strategy(cfg, world)` returns the engine whose primitives the
training step (`clipav2.train.step`) drives; techniques are applied to the plain model by
`clipav2.parallel.apply` (see `clipav2.parallel.base.Strategy` and docs/engine.md).

    world = init_distributed(cfg)
    strategy = build_strategy(cfg, world)     # validates everything first: no model is built yet
    strategy.setup(create_model(...), stage)
"""
from __future__ import annotations

import importlib

from clipav2.lazy import exports

# the engines' shared modules import torch; they load on first use, so the config's checks and
# `clipav2 bench --help` read STRATEGIES without it
__getattr__, _lazy = exports(__name__, {
    "clipav2.parallel.base": ["StepResult", "Strategy"],
    "clipav2.parallel.env": ["World", "init_distributed"],
})
__all__ = ["STRATEGIES", "build_strategy", *_lazy]

# parallel.strategy -> (module, class); the engine's module is imported only when chosen
STRATEGIES = {
    "single": ("clipav2.parallel.native", "SingleStrategy"),
    "ddp": ("clipav2.parallel.native", "DDPStrategy"),
    "fsdp": ("clipav2.parallel.fsdp", "FSDPStrategy"),
    "deepspeed": ("clipav2.parallel.deepspeed_strategy", "DeepSpeedStrategy"),
}


def build_strategy(cfg, world: World) -> Strategy:
    """The engine, after the whole config is checked against the world (no model is built yet)."""
    cfg.validate(world.world_size)
    module, name = STRATEGIES[cfg.parallel.strategy]
    return getattr(importlib.import_module(module), name)(cfg, world)
