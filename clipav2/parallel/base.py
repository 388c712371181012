"""The one interface the training loop sees (DESIGN idea 2). A strategy owns the wrapped model,
the optimizer and the LR schedule of the current stage:

    strategy.setup(model, stage)                      # wrap, build AdamW + warmup/cosine
    for micro in range(n_micro):
        strategy.forward_backward(lambda m: clip_loss(*m(images, ids), world), micro, n_micro)
    result = strategy.step()                          # StepResult(lr, grad_norm, skipped, loss)
    strategy.save(dir, extra) / extra = strategy.load(dir)
    weights = strategy.full_state_dict()              # fp32, complete on rank 0

A non-finite loss or gradient norm skips the optimizer update (the step still counts, so the LR
schedule and the data stream stay in lock-step with the step number).

No host synchronisation inside the step (single, ddp, fsdp): the skip decision is a device
tensor (`found_inf`) that the optimizer honours on the device, the result's loss, grad norm and
skip flag are 0-d device tensors, and the skip counters (`strategy.skips`) live on the device.
The host reads them when it logs: `result.to_host()`, `strategy.skips.read()`. DeepSpeed decides
the skip on the host inside `engine.step()` (one sync per step its engine makes anyway).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist

from clipav2.config import grad_accum_steps
from clipav2.parallel.skips import SkipCounter
from clipav2.train.optim import lr_at


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


def resolve_precision(cfg, world) -> str:
    """`auto` is bf16 on CUDA, fp32 on the CPU (bf16 matmuls are ~15x slower on our CPUs)."""
    if cfg.parallel.precision != "auto":
        return cfg.parallel.precision
    return "bf16" if world.device.type == "cuda" else "fp32"


class Strategy:
    name = "base"

    def __init__(self, cfg, world):
        self.cfg = cfg
        self.world = world
        self.precision = resolve_precision(cfg, world)
        self.model = None
        self.optimizer = None
        self.stage = None
        self.step_count = 0  # optimizer steps of this stage taken so far (skipped ones included)
        self.skips = SkipCounter(world.device)  # on the device: read it when logging
        self._loss_sum = 0.0

    # ------------------------------------------------------------------ what subclasses provide
    def _wrap(self, model):  # -> sets self.model and self.optimizer
        raise NotImplementedError

    def _backward(self, loss, micro_index: int, n_micro: int) -> None:
        raise NotImplementedError

    def _apply_step(self, lr: float, loss: torch.Tensor):
        """Clip and apply the update unless `loss` or the gradient norm is non-finite.
        -> (grad_norm, skipped): 0-d device tensors (or host values where the engine syncs)."""
        raise NotImplementedError

    def _save_state(self, path: Path) -> None:
        raise NotImplementedError

    def _load_state(self, path: Path) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------ the interface
    def setup(self, model: torch.nn.Module, stage) -> None:
        """Wrap `model` (built on the CPU, fp32) for this stage and build a fresh optimizer and
        LR schedule (the spec re-initialises the optimizer between stages)."""
        self.stage = stage
        self.n_micro = grad_accum_steps(self.cfg, stage, self.world.world_size)
        self.step_count = 0
        self.skips.new_stage()
        self._loss_sum = 0.0
        self._wrap(model)

    def autocast(self):
        """bf16 compute where the engine does not cast parameters itself (single, ddp)."""
        enabled = self.precision == "bf16"
        return torch.autocast(self.world.device.type, dtype=torch.bfloat16, enabled=enabled)

    def forward_backward(self, loss_fn, micro_index: int, n_micro: int) -> torch.Tensor:
        """Run `loss_fn(self.model) -> scalar loss` on one micro-batch and accumulate its gradient
        (scaled by 1/n_micro; gradient sync only on the last micro-step). Returns the detached
        local loss."""
        loss = loss_fn(self.model)
        self._backward(loss, micro_index, n_micro)
        loss = loss.detach().float()
        self._loss_sum = self._loss_sum + loss / n_micro
        return loss

    def lr(self) -> float:
        s = self.stage
        return lr_at(self.step_count, s.peak_lr, s.warmup_steps, s.steps)

    @property
    def skipped_total(self) -> int:
        """Skipped steps so far (reads the device counter: a sync)."""
        return int(self.skips.total.item())

    def step(self) -> StepResult:
        """The optimizer step; enqueues device work only (no host sync except under DeepSpeed)."""
        loss = torch.as_tensor(self._loss_sum, dtype=torch.float32, device=self.world.device).reshape(1).clone()
        if self.world.distributed:
            dist.all_reduce(loss)
            loss /= self.world.world_size
        loss = loss.reshape(())
        lr = self.lr()
        grad_norm, skipped = self._apply_step(lr, loss)
        self.step_count += 1
        self.skips.update(skipped, self.step_count)
        self._loss_sum = 0.0
        return StepResult(lr=lr, grad_norm=grad_norm, skipped=skipped, loss=loss)

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
        path = Path(directory)
        meta = json.loads((path / "strategy.json").read_text())
        if meta["stage"] != self.stage.name:
            raise ValueError(f"checkpoint {path} is of stage {meta['stage']!r}, the strategy is set up for {self.stage.name!r}")
        self._load_state(path)
        self.step_count = meta["step_count"]
        self.skips.load_state_dict(meta.get("skips", {"total": meta["skipped_total"]}))
        own = path / "extra" / f"rank_{self.world.rank}.json"
        return json.loads((own if own.exists() else path / "extra" / "rank_0.json").read_text())
