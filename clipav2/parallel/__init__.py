"""Pluggable parallelism: `build_strategy(cfg, world)` returns the engine whose primitives the
training step (`clipav2.train.step`) drives; techniques are applied to the plain model by
`clipav2.parallel.apply` (see `clipav2.parallel.base.Strategy` and docs/engine.md).

    world = init_distributed(cfg)
    strategy = build_strategy(cfg, world)     # validates everything first: no model is built yet
    strategy.setup(create_model(...), stage)
"""
from __future__ import annotations

from clipav2.config import ConfigError, validate
from clipav2.parallel.base import StepResult, Strategy
from clipav2.parallel.env import World, init_distributed

__all__ = ["build_strategy", "check_parallel_config", "init_distributed", "StepResult", "Strategy", "World"]


def check_parallel_config(cfg, world_size: int) -> None:
    """Everything about the engine that can be wrong before a model exists: strategy name, ZeRO
    stage, batch divisibility by world x micro-batch x accumulation, HSDP group size."""
    validate(cfg, world_size)
    p = cfg.parallel
    if p.strategy == "single" and world_size > 1:
        raise ConfigError(f"parallel.strategy: single runs one process, the world has {world_size}; use ddp, fsdp or deepspeed")
    if p.strategy == "fsdp" and p.hsdp_shard_size is not None and world_size % p.hsdp_shard_size:
        raise ConfigError(f"parallel.hsdp_shard_size: {p.hsdp_shard_size} does not divide the world size {world_size}")
    if p.strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("parallel.strategy: deepspeed is not installed (pip install deepspeed)") from None


def build_strategy(cfg, world: World) -> Strategy:
    check_parallel_config(cfg, world.world_size)
    name = cfg.parallel.strategy
    if name == "single":
        from clipav2.parallel.native import SingleStrategy as cls
    elif name == "ddp":
        from clipav2.parallel.native import DDPStrategy as cls
    elif name == "fsdp":
        from clipav2.parallel.fsdp import FSDPStrategy as cls
    else:
        from clipav2.parallel.deepspeed_strategy import DeepSpeedStrategy as cls
    return cls(cfg, world)
