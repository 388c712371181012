"""One optimizer step, for every engine: uint8 micro-batches in, normalised on the device, kept
patch indices drawn per sample, InfoNCE over the GLOBAL batch, gradient clipping and the
optimizer step with a device-side skip. The engine (`clipav2.parallel`) only supplies its
primitives (forward, backward, gradient sync, norm); DeepSpeed alone steps itself.

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

import torch
import torch.distributed as dist

from clipav2.data import normalize
from clipav2.loss import clip_loss
from clipav2.optim import skip_step_on_device
from clipav2.parallel.base import StepResult
from clipav2.reduce.image import keep_indices


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


def _losses(strategy, inputs, loss_fn):
    """Forward and backward of every micro-step -> the last micro-step's loss (all are equal)."""
    n, world = len(inputs), strategy.world
    if n > 1:
        with torch.no_grad(), strategy.autocast():
            cached = [strategy.model(*x)[:2] for x in inputs]
    for i, x in enumerate(inputs):
        last = i == n - 1
        with strategy.no_sync(last):
            with strategy.autocast():
                img, txt, scale = strategy.model(*x)
            if n > 1:
                img = torch.cat([c[0] for c in cached[:i]] + [img] + [c[0] for c in cached[i + 1 :]])
                txt = torch.cat([c[1] for c in cached[:i]] + [txt] + [c[1] for c in cached[i + 1 :]])
                scale = _one_nth_of_the_gradient(scale, n)
            loss = loss_fn(img, txt, scale, world)
            strategy.backward(loss, last)
    return loss.detach().float(), scale.detach()


def _update(strategy, lr: float, loss: torch.Tensor):
    """Clip and apply the update unless the loss, the gradient norm or the LR is non-finite, decided on
    the device -> (grad_norm, skipped) as 0-d device tensors."""
    lr_ok = math.isfinite(lr)  # a host float: checking it costs no sync
    if strategy.owns_update:
        norm, skipped = strategy.engine_step(lr if lr_ok else 0.0)
        return norm, skipped or not lr_ok
    norm = strategy.grad_norm()
    skipped = ~(torch.isfinite(norm) & torch.isfinite(loss))
    if not lr_ok:
        skipped = torch.ones_like(skipped)
        lr = 0.0
    if strategy.stage.grad_clip is not None:
        strategy.clip_grads(norm, strategy.stage.grad_clip)  # a non-finite norm only spoils dropped grads
    strategy.set_lr(lr)
    skip_step_on_device(strategy.optimizer, skipped)
    strategy.optimizer.zero_grad(set_to_none=True)
    return norm.detach(), skipped


def train_step(strategy, inputs: list[tuple], loss_fn=clip_loss, before_update=None) -> tuple[StepResult, torch.Tensor]:
    """One optimizer step over this rank's micro-batches `inputs` [(images, ids, keep), ...]
    -> (StepResult, the exponentiated temperature of the forward). Enqueues device work only
    (no host sync except under DeepSpeed). The step counts even when skipped, so the LR schedule
    and the data stream stay in lock-step with the step number. `before_update()`, when given,
    runs after the backward and before anything is applied (the loop's micro-batch trial: it may
    raise to abandon the step)."""
    loss, scale = _losses(strategy, inputs, loss_fn)
    if before_update is not None:
        before_update()
    loss = loss.reshape(1)
    if strategy.world.distributed:
        dist.all_reduce(loss)  # every rank decides the skip on the same (mean) loss
        loss = loss / strategy.world.world_size
    loss = loss.reshape(())
    lr = strategy.lr()
    grad_norm, skipped = _update(strategy, lr, loss)
    strategy.step_count += 1
    strategy.skips.update(skipped, strategy.step_count)
    return StepResult(lr=lr, grad_norm=grad_norm, skipped=skipped, loss=loss), scale


class StepRunner:
    """Builds the per-micro-batch inputs of the loader's batches and runs `train_step`, for the
    stage the strategy is set up for (its resolved `clipav2.stage.Stage`)."""

    def __init__(self, strategy, seed: int):
        self.strategy, self.stage, self.seed = strategy, strategy.stage, seed
        self.world = strategy.world
        self.last_scale = None  # the exponentiated temperature of the last forward (device tensor)

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
        inputs = [self.inputs(b, step, i) for i, b in enumerate(batches)]
        result, self.last_scale = train_step(self.strategy, inputs, before_update=before_update)
        return result
