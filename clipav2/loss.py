"""CLIP's softmax InfoNCE over the global batch (clipa_jax `loss_use_global_batch`): ½(CE image->text + CE
text->image). Each rank scores its own rows against the features of every rank, gathered with
gradients (torch.distributed.nn.functional.all_gather sums the gradients back on the way down),
so the mean of the ranks' losses is the single-process loss over the global batch, in value and
in gradient once data parallelism averages the gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gather_with_grad(x: torch.Tensor, world) -> torch.Tensor:
    """Concatenate `x` from every rank in rank order, differentiably."""
    if world is None or world.world_size == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, world=None) -> torch.Tensor:
    """This rank's share of the global InfoNCE loss. `image_emb`/`text_emb`: (b, d) normalised
    features of this rank's micro-batch; `logit_scale`: the already-exponentiated temperature.
    The logits are computed in fp32 whatever the tower precision (b x d casts, cheap)."""
    if image_emb.shape != text_emb.shape or image_emb.ndim != 2:
        raise ValueError(f"clip_loss: image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)} must be equal (b, d)")
    all_image = gather_with_grad(image_emb, world)
    all_text = gather_with_grad(text_emb, world)
    rank = 0 if world is None else world.rank
    labels = torch.arange(image_emb.shape[0], device=image_emb.device) + rank * image_emb.shape[0]
    scale = logit_scale.float()
    with torch.autocast(image_emb.device.type, enabled=False):
        logits_per_image = scale * image_emb.float() @ all_text.float().T
        logits_per_text = scale * text_emb.float() @ all_image.float().T
    return 0.5 * (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels))
