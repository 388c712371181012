"""One optimizer step, for every engine: uint8 micro-batches in, normalised on the device, kept
patch indices drawn per sample, InfoNCE over the GLOBAL batch, gradient clipping and the
optimizer step with a device-side skip. `TrainStep` owns the step's state: the optimizer (the
one place `build_optimizer` is called), the LR schedule, the step count and the skip counter. The
engine (`clipav2.parallel`) only supplies its primitives (forward, backward, gradient sync, norm,
saving); DeepSpeed alone steps itself.

With one micro-step per rank the loss is `clip_loss` over the gathered micro-batches. With
gradient accumulation the contrastive loss still spans the whole global batch (as CLIPA's large
batches need): a no-grad pass embeds every micro-batch first, then each micro-step recomputes its
own features with gradients and scores them against the cached features of all the others
(open_clip's `accum_freq` scheme). Each micro-step's loss is the global loss, differentiated
through its own rows only, so the gradients add up to the global-batch gradient with no scaling;
the temperature, live in every micro-step, takes 1/n of its gradient from each.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist

from clipav2.data import normalize
from clipav2.loss import clip_loss
from clipav2.optim import build_optimizer, lr_at, skip_step_on_device
from clipav2.parallel import StepShape, build_engine
from clipav2.reduce.image import keep_indices
from clipav2.train.skips import SkipCounter


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


def keep_seed(seed: int, stage_index: int, step: int, rank: int, micro: int) -> int:
    """A 63-bit seed for the kept-patch draw of one micro-batch, stable across processes, so a
    resumed run drops exactly the patches the uninterrupted run dropped."""
    text = f"keep\x00{seed}\x00{stage_index}\x00{step}\x00{rank}\x00{micro}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def _one_nth_of_the_gradient(x: torch.Tensor, n: int) -> torch.Tensor:
    """`x` in value, 1/n of it in gradient. The temperature scores every micro-step's loss (each
    is the global loss), so the n micro-steps would give it n times its gradient; keeping it live
    in all of them (not only in one) is what ZeRO-3 needs: a parameter left without a gradient in
    some micro-steps keeps a stale non-finite one after a skipped step."""
    return x.detach() + (x - x.detach()) / n


def _losses(engine, world, inputs, loss_fn):
    """Forward and backward of every micro-step -> the last micro-step's loss (all are equal)."""
    n = len(inputs)
    if n > 1:
        with torch.no_grad(), engine.autocast():
            cached = [engine.model(*x)[:2] for x in inputs]
    for i, x in enumerate(inputs):
        last = i == n - 1
        with engine.no_sync(last):
            with engine.autocast():
                img, txt, scale = engine.model(*x)
            if n > 1:
                img = torch.cat([c[0] for c in cached[:i]] + [img] + [c[0] for c in cached[i + 1 :]])
                txt = torch.cat([c[1] for c in cached[:i]] + [txt] + [c[1] for c in cached[i + 1 :]])
                scale = _one_nth_of_the_gradient(scale, n)
            loss = loss_fn(img, txt, scale, world)
            engine.backward(loss, last)
    return loss.detach().float(), scale.detach()


class TrainStep:
    """The optimizer steps of one stage (a resolved `clipav2.stage.Stage`) of a fresh model: the
    engine built around it, and the state the step owns (optimizer, LR schedule, step count,
    device-side skip counter). The optimizer and the schedule start fresh with every stage."""

    def __init__(self, cfg, stage, world, model):
        self.stage, self.world, self.seed = stage, world, cfg.seed
        bf16_momentum = cfg.parallel.bf16_momentum

        def make_optimizer(module, fused: bool):
            return build_optimizer(module, stage, bf16_momentum, fused=fused)

        shape = StepShape(stage.global_batch, stage.micro_batch, stage.grad_accum, stage.grad_clip)
        self.engine, self.optimizer = build_engine(cfg.parallel, cfg.model, world, model, make_optimizer, shape)
        self.count = 0  # optimizer steps of this stage taken so far (skipped ones included)
        self.skips = SkipCounter(world.device)  # on the device: read it when logging
        self.last_scale = None  # the exponentiated temperature of the last forward (device tensor)

    def lr(self) -> float:
        s = self.stage
        return lr_at(self.count, s.peak_lr, s.warmup_steps, s.steps)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _update(self, lr: float, loss: torch.Tensor):
        """Clip and apply the update unless the loss, the gradient norm or the LR is non-finite,
        decided on the device -> (grad_norm, skipped) as 0-d device tensors."""
        engine = self.engine
        lr_ok = math.isfinite(lr)  # a host float: checking it costs no sync
        if engine.owns_update:
            norm, skipped = engine.step(lr if lr_ok else 0.0, self.optimizer)
            return norm, skipped or not lr_ok
        norm = engine.grad_norm()
        skipped = ~(torch.isfinite(norm) & torch.isfinite(loss))
        if not lr_ok:
            skipped = torch.ones_like(skipped)
            lr = 0.0
        if self.stage.grad_clip is not None:
            engine.clip_grads(norm, self.stage.grad_clip)  # a non-finite norm only spoils dropped grads
        self._set_lr(lr)
        skip_step_on_device(self.optimizer, skipped)
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach(), skipped

    def __call__(self, inputs: list[tuple], loss_fn=clip_loss, before_update=None) -> tuple[StepResult, torch.Tensor]:
        """One optimizer step over this rank's micro-batches `inputs` [(images, ids, keep), ...]
        -> (StepResult, the exponentiated temperature of the forward). Enqueues device work only
        (no host sync except under DeepSpeed). The step counts even when skipped, so the LR
        schedule and the data stream stay in lock-step with the step number. `before_update()`,
        when given, runs after the backward and before anything is applied."""
        loss, scale = _losses(self.engine, self.world, inputs, loss_fn)
        if before_update is not None:
            before_update()
        loss = loss.reshape(1)
        if self.world.distributed:
            dist.all_reduce(loss)  # every rank decides the skip on the same (mean) loss
            loss = loss / self.world.world_size
        loss = loss.reshape(())
        lr = self.lr()
        grad_norm, skipped = self._update(lr, loss)
        self.count += 1
        self.skips.update(skipped, self.count)
        return StepResult(lr=lr, grad_norm=grad_norm, skipped=skipped, loss=loss), scale

    def inputs(self, batch: dict, step: int, micro: int):
        """(normalised images, token ids, kept patch indices or None) on the device."""
        device = self.world.device
        images = normalize(batch["images"].to(device, non_blocking=True))
        ids = batch["text"].to(device, non_blocking=True)
        gen = torch.Generator(device=device)
        s = self.stage
        gen.manual_seed(keep_seed(self.seed, s.index, step, self.world.rank, micro))
        keep = keep_indices(s.image_reduction, s.grid, images.shape[0], s.image_mask_ratio, s.grid_window, gen, device)
        return images, ids, keep

    def run(self, batches: list[dict], step: int, before_update=None) -> StepResult:
        """The step of the loader's micro-batches `batches` at step number `step` (0-based).
        `before_update()`, when given, runs after the backward and before anything is applied
        (the loop's micro-batch trial: it may raise to abandon the step)."""
        inputs = [self.inputs(b, step, i) for i, b in enumerate(batches)]
        result, self.last_scale = self(inputs, before_update=before_update)
        return result
