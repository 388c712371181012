"""One optimizer step: uint8 micro-batches in, normalised on the device, kept patch indices drawn
per sample, InfoNCE over the GLOBAL batch, through the Strategy (no engine branches here).

With one micro-step per rank the loss is simply `clip_loss` over the gathered micro-batches. With
gradient accumulation the contrastive loss still spans the whole global batch (as CLIPA's large
batches need): a no-grad pass embeds every micro-batch first, then each micro-step recomputes its
own features with gradients and scores them against the cached features of all the others
(open_clip's `accum_freq` scheme). The sum over micro-steps of those gradients is exactly the
gradient of the global-batch loss.
"""
from __future__ import annotations

import hashlib

import torch

from clipav2.data import normalize
from clipav2.loss import clip_loss


def keep_seed(seed: int, stage_index: int, step: int, rank: int, micro: int) -> int:
    """A 63-bit seed for the kept-patch draw of one micro-batch, stable across processes, so a
    resumed run drops exactly the patches the uninterrupted run dropped."""
    text = f"keep\x00{seed}\x00{stage_index}\x00{step}\x00{rank}\x00{micro}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


class StepRunner:
    """Builds the per-micro-batch inputs and drives `strategy` through one optimizer step."""

    def __init__(self, strategy, stage, stage_index: int, seed: int, patch_size: int):
        from clipav2.reduce.image import keep_indices

        self.strategy, self.stage, self.stage_index, self.seed = strategy, stage, stage_index, seed
        self.world = strategy.world
        self.grid = (stage.image_size // patch_size, stage.image_size // patch_size)
        self._keep_indices = keep_indices
        self.last_scale = None  # the exponentiated temperature of the last forward (device tensor)

    def inputs(self, batch: dict, step: int, micro: int):
        """(normalised images, token ids, kept patch indices or None) on the device."""
        device = self.world.device
        images = normalize(batch["images"].to(device, non_blocking=True))
        ids = batch["text"].to(device, non_blocking=True)
        gen = torch.Generator(device=device)
        gen.manual_seed(keep_seed(self.seed, self.stage_index, step, self.world.rank, micro))
        s = self.stage
        keep = self._keep_indices(s.image_reduction, self.grid, images.shape[0], s.image_mask_ratio, s.grid_window, gen, device)
        return images, ids, keep

    def run(self, batches: list[dict], step: int):
        """Forward/backward every micro-batch of this rank, then the optimizer step -> StepResult."""
        n = len(batches)
        inputs = [self.inputs(b, step, i) for i, b in enumerate(batches)]
        if n == 1:
            images, ids, keep = inputs[0]

            def loss_fn(model):
                img, txt, scale = model(images, ids, keep)
                self.last_scale = scale.detach()
                return clip_loss(img, txt, scale, self.world)

            self.strategy.forward_backward(loss_fn, 0, 1)
            return self.strategy.step()
        with torch.no_grad(), self.strategy.autocast():
            cached = [self.strategy.model(*x) for x in inputs]
        img_cache = [c[0] for c in cached]
        txt_cache = [c[1] for c in cached]
        for i, (images, ids, keep) in enumerate(inputs):

            def loss_fn(model, i=i, images=images, ids=ids, keep=keep):
                img, txt, scale = model(images, ids, keep)
                self.last_scale = scale.detach()
                all_img = torch.cat(img_cache[:i] + [img] + img_cache[i + 1 :])
                all_txt = torch.cat(txt_cache[:i] + [txt] + txt_cache[i + 1 :])
                # the temperature is live in every micro-step: give each 1/n of its gradient
                scale = scale.detach() + (scale - scale.detach()) / n
                loss = clip_loss(all_img, all_txt, scale, self.world)
                # the strategy averages micro-steps (x 1/n); each of ours carries 1/n of the
                # global gradient already, so scale the gradient by n and keep the value
                return loss * n - loss.detach() * (n - 1)

            self.strategy.forward_backward(loss_fn, i, n)
        return self.strategy.step()
