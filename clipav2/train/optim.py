"""The optimizer of the spec (section 3): AdamW with betas (0.9, 0.95), eps 1e-8, decoupled weight
decay on weight matrices only, optionally a bfloat16 first moment (CLIPA's memory saving), and a
linear-warmup + cosine-to-0 learning rate counted in optimizer steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """big_vision's warmup_cosine: 0 -> peak linearly over `warmup` steps, then cosine to 0 at
    `total`. `step` is the 0-based index of the optimizer step about to run."""
    if step < warmup:
        return peak * step / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def decays(module: nn.Module, local_name: str, param: nn.Parameter) -> bool:
    """Weight decay on weight matrices only: the `weight` of a Linear/Conv-like layer (ndim >= 2).
    Biases, norms, class token, position and token embeddings and the temperature are exempt."""
    return local_name.endswith("weight") and param.ndim >= 2 and not isinstance(module, nn.Embedding)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups (decay, no decay), each parameter once, in model order (shared ones once)."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (decay if decays(module, name, p) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


class AdamWLowPrecisionMomentum(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update) whose first moment is stored in `momentum_dtype`
    (bfloat16 in CLIPA, optax's `mu_dtype`): the update uses the full-precision moment, the stored
    copy is rounded, as optax does. The second moment stays fp32. Works on plain tensors, FSDP2
    DTensors and DeepSpeed's flat partitions alike (elementwise ops only)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.momentum_dtype = momentum_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.momentum_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"].item()
                m = state["exp_avg"].float().lerp_(g, 1 - b1)
                state["exp_avg"].copy_(m)
                v = state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                p.mul_(1 - lr * wd)
                denom = (v.sqrt() / math.sqrt(1 - b2**t)).add_(eps)
                p.addcdiv_(m.to(p.dtype), denom.to(p.dtype), value=-lr / (1 - b1**t))
        return loss


def build_optimizer(model: nn.Module, stage, bf16_momentum: bool = False, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over `model`'s trainable parameters with the stage's betas/eps/weight decay. The LR
    is set before every step by the strategy (`lr_at`), so it starts at the peak here."""
    groups = param_groups(model, stage.weight_decay)
    kwargs = dict(lr=stage.peak_lr, betas=tuple(stage.betas), eps=stage.eps)
    if bf16_momentum:
        return AdamWLowPrecisionMomentum(groups, **kwargs)
    return torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **kwargs)
