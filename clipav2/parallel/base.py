"""What an engine gives the step (`clipav2.train.step`, which owns the optimizer step itself). A
strategy holds the model of the current stage with its techniques applied, the optimizer and the
LR schedule:

    strategy.setup(model, stage)     # apply_ac, apply_compile, then the engine's own wrapping
    with strategy.no_sync(last):     # gradient sync on the last micro-step only
        with strategy.autocast():
            out = strategy.model(images, ids, keep)
        strategy.backward(loss, last)
    norm = strategy.grad_norm(); strategy.clip_grads(norm, max_norm); strategy.optimizer_step(lr, skipped)
    strategy.save(dir, extra) / extra = strategy.load(dir)
    weights = strategy.full_state_dict()              # fp32, complete on rank 0

DeepSpeed is the one engine that owns backward and the optimizer step (`owns_update`): its
engine clips, checks for overflow and steps in `engine.step()`.

No host synchronisation inside the step (single, ddp, fsdp): the skip decision is a device
tensor (`found_inf`) that the optimizer honours on the device, the result's loss, grad norm and
skip flag are 0-d device tensors, and the skip counters (`strategy.skips`) live on the device.
The host reads them when it logs: `result.to_host()`, `strategy.skips.read()`. DeepSpeed decides
the skip on the host inside `engine.step()` (one sync per step its engine makes anyway).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist

from clipav2.stage import resolve
from clipav2.optim import lr_at
from clipav2.parallel.apply import apply_ac, apply_compile
from clipav2.parallel.skips import SkipCounter


@dataclass
class StepResult:
    """What one step did. Fields may be 0-d device tensors (reading them syncs the host with the
    device): call `to_host()` when logging, not every step."""

    lr: float  # the learning rate this step used (always a host float)
    grad_norm: float | torch.Tensor  # global L2 norm of the gradient before clipping (inf/nan when skipped for it)
    skipped: bool | torch.Tensor  # True: the loss or gradient was non-finite and the update was not applied
    loss: float | torch.Tensor  # mean loss over this step's micro-steps and ranks

    def to_host(self) -> "StepResult":
        """The same result with plain floats and a bool (one device->host copy for all fields)."""
        return to_host([self])[0]


def to_host(results: list[StepResult]) -> list[StepResult]:
    """Many results read back with a single device->host copy (a log interval's worth)."""
    names = [f.name for f in fields(StepResult)]
    tensors = [getattr(r, n) for r in results for n in names if isinstance(getattr(r, n), torch.Tensor)]
    if tensors:
        device = tensors[0].device
        values = iter(torch.stack([t.detach().reshape(()).float().to(device) for t in tensors]).tolist())
    out = []
    for r in results:
        host = {n: next(values) if isinstance(getattr(r, n), torch.Tensor) else getattr(r, n) for n in names}
        out.append(replace(r, lr=float(host["lr"]), grad_norm=float(host["grad_norm"]), skipped=bool(host["skipped"]),
                           loss=float(host["loss"])))
    return out


PRECISIONS = ("auto", "fp32", "bf16_autocast", "bf16_params")  # parallel.precision (docs/engine.md)


def resolve_precision(cfg, world) -> str:
    """`auto` is bf16_autocast on CUDA (CLIPA's numerics, docs/engine.md), fp32 on the CPU (bf16
    matmuls are ~15x slower on our CPUs)."""
    if cfg.parallel.precision != "auto":
        return cfg.parallel.precision
    return "bf16_autocast" if world.device.type == "cuda" else "fp32"


def resolve_compile(cfg, world) -> bool:
    """`model.compile` unset: compile the blocks on CUDA, not on the CPU (where inductor's C++
    compile costs more than it buys for a short test run)."""
    return cfg.model.compile if cfg.model.compile is not None else world.device.type == "cuda"


class Strategy:
    name = "base"
    owns_update = False  # True: the engine clips, skips and steps itself (DeepSpeed)

    def __init__(self, cfg, world):
        self.cfg = cfg
        self.world = world
        self.precision = resolve_precision(cfg, world)
        self.model = None  # what the step calls: model(images, ids, keep) -> (img, txt, scale)
        self.module = None  # the plain module underneath (parameters, state dict)
        self.optimizer = None
        self.stage = None
        self.compiled = False  # the blocks are torch.compiled (model.compile, resolved)
        self.step_count = 0  # optimizer steps of this stage taken so far (skipped ones included)
        self.skips = SkipCounter(world.device)  # on the device: read it when logging

    # ------------------------------------------------------------------ what engines provide
    def _wrap(self, model):  # -> sets self.model, self.module and self.optimizer
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

    def engine_step(self, lr: float):
        """Engines that own the update (`owns_update`): clip, skip and step -> (grad_norm, skipped)."""
        raise NotImplementedError

    def _save_state(self, path: Path) -> None:
        raise NotImplementedError

    def _load_state(self, path: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ the interface
    def setup(self, model: torch.nn.Module, stage) -> None:
        """Apply the techniques to `model` (built on the CPU, fp32) in their fixed order and build
        a fresh optimizer and LR schedule (the optimizer is re-initialised between stages)."""
        self.stage = resolve(self.cfg, stage, self.world.world_size)
        self.step_count = 0
        self.skips.new_stage()
        apply_ac(model, self.cfg.model.checkpointing)
        self.compiled = resolve_compile(self.cfg, self.world)
        if self.compiled:
            apply_compile(model)
        self._wrap(model)

    def autocast(self):
        """bf16 matmuls over fp32 parameters and residual stream under `bf16_autocast`."""
        enabled = self.precision == "bf16_autocast"
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=enabled)

    def lr(self) -> float:
        s = self.stage
        return lr_at(self.step_count, s.peak_lr, s.warmup_steps, s.steps)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def barrier(self) -> None:
        if self.world.distributed:
            dist.barrier()

    def save(self, directory, extra: dict) -> None:
        """Every rank calls this with its own `extra` (JSON-able: step, data position, RNG...)."""
        path = Path(directory)
        (path / "extra").mkdir(parents=True, exist_ok=True)
        self._save_state(path)
        skips = self.skips.state_dict()
        (path / "extra" / f"rank_{self.world.rank}.json").write_text(json.dumps(extra))
        if self.world.is_main:
            meta = {
                "strategy": self.name,
                "stage": self.stage.name,
                "step_count": self.step_count,
                "skipped_total": skips["total"],
                "skips": skips,
                "world_size": self.world.world_size,
            }
            (path / "strategy.json").write_text(json.dumps(meta, indent=1))
        self.barrier()

    def load(self, directory) -> dict:
        """Restore model, optimizer and schedule saved by `save`; returns this rank's `extra`
        (rank 0's when the checkpoint came from a smaller world)."""
        from clipav2.train.safe_load import read_json
        from clipav2.train.state_check import check_extra, check_strategy_meta

        path = Path(directory)
        meta = read_json(path / "strategy.json")
        check_strategy_meta(meta)
        own = path / "extra" / f"rank_{self.world.rank}.json"
        extra = read_json(own if own.exists() else path / "extra" / "rank_0.json")
        check_extra(extra)
        if meta["stage"] != self.stage.name:
            raise ValueError(f"checkpoint {path} is of stage {meta['stage']!r}, the strategy is set up for {self.stage.name!r}")
        self._load_state(path)
        self.step_count = meta["step_count"]
        self.skips.load_state_dict(meta.get("skips", {"total": meta.get("skipped_total")}))
        return extra

    def check_files(self, directory) -> None:
        """Read and admit what this rank's `load` would unpickle, before `load` enters any collective
        (so a refusal is agreed on by every rank, not met by one inside the engine): here DCP's index."""
        from clipav2.parallel.dcp_io import checked_reader

        checked_reader(Path(directory) / "state")
