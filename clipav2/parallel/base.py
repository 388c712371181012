"""What an engine gives the training step: the model with the parallelism techniques applied, and
the primitives of one optimizer step. An engine knows nothing of stages, configs or training; the
step (`clipav2.train.step`) owns the optimizer, the LR schedule and the step count, and hands the
engine an optimizer factory:

    engine, optimizer = build_engine(parallel, model_settings, world, model, make_optimizer, shape)
    with engine.no_sync(last):       # gradient sync on the last micro-step only
        with engine.autocast():
            out = engine.model(images, ids, keep)
        engine.backward(loss, last)
    norm = engine.grad_norm(); engine.clip_grads(norm, max_norm)    # then the step's optimizer.step()
    engine.save(dir, optimizer) / engine.load(dir, optimizer)
    weights = engine.full_state_dict()              # fp32, complete on rank 0

DeepSpeed is the one engine that owns the update (`owns_update`): its `engine.step()` clips,
checks for overflow and steps (`Engine.step(lr, optimizer)`).

No host synchronisation inside the primitives (single, ddp, fsdp): the gradient norm is a device
tensor. DeepSpeed decides the skip on the host inside `engine.step()` (one sync per step its
engine makes anyway).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16_autocast", "bf16_params")  # parallel.precision (docs/engine.md)


@dataclass(frozen=True)
class StepShape:
    """What an engine that runs the update itself (DeepSpeed) must know of the step."""

    global_batch: int
    micro_batch: int  # per rank and micro-step
    grad_accum: int  # micro-steps per optimizer step
    grad_clip: float | None


def resolve_precision(parallel, world) -> str:
    """`auto` is bf16_autocast on CUDA (CLIPA's numerics, docs/engine.md), fp32 on the CPU (bf16
    matmuls are ~15x slower on our CPUs). `parallel`: the parallel settings (`cfg.parallel`)."""
    if parallel.precision != "auto":
        return parallel.precision
    return "bf16_autocast" if world.device.type == "cuda" else "fp32"


def resolve_compile(model_settings, world) -> bool:
    """`model.compile` unset: compile the blocks on CUDA, not on the CPU (where inductor's C++
    compile costs more than it buys for a short test run)."""
    return model_settings.compile if model_settings.compile is not None else world.device.type == "cuda"


class Engine:
    name = "base"
    owns_update = False  # True: the engine clips, skips and steps itself (DeepSpeed)

    def __init__(self, parallel, world):
        self.parallel = parallel
        self.world = world
        self.precision = resolve_precision(parallel, world)
        self.model = None  # what the step calls: model(images, ids, keep) -> (img, txt, scale)
        self.module = None  # the plain module underneath (parameters, state dict)
        self.compiled = False  # the blocks are torch.compiled (model.compile, resolved)

    # ------------------------------------------------------------------ what engines provide
    def wrap(self, model, make_optimizer, shape: StepShape):
        """Set `model`, `module`; build the optimizer over the wrapped parameters with
        `make_optimizer(module, fused)` and return the one the step drives."""
        raise NotImplementedError

    def no_sync(self, last: bool):
        """Context of one micro-step's forward and backward: gradient sync only when `last`."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate the gradient of `loss` as it is (no scaling here: the step scales)."""
        loss.backward()

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradient (a 0-d device tensor)."""
        return torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])

    def clip_grads(self, norm: torch.Tensor, max_norm: float) -> None:
        torch.nn.utils.clip_grads_with_norm_(self.module.parameters(), max_norm, norm)

    def step(self, lr: float, optimizer):
        """Engines that own the update (`owns_update`): clip, skip and step -> (grad_norm, skipped)."""
        raise NotImplementedError

    def save(self, path: Path, optimizer) -> None:
        """The model's and the optimizer's state under `path` (every rank calls it)."""
        raise NotImplementedError

    def load(self, path: Path, optimizer) -> None:
        raise NotImplementedError

    def check_files(self, directory) -> None:
        """Read and admit what this rank's `load` would unpickle, before `load` enters any collective
        (so a refusal is agreed on by every rank, not met by one inside the engine): here DCP's index."""
        from clipav2.parallel.dcp_io import checked_reader

        checked_reader(Path(directory) / "state")

    def full_state_dict(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def autocast(self):
        """bf16 matmuls over fp32 parameters and residual stream under `bf16_autocast`."""
        enabled = self.precision == "bf16_autocast"
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=enabled)
