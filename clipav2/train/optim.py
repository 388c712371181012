"""The optimizer of the spec (section 3): AdamW with betas (0.9, 0.95), eps 1e-8, decoupled weight
decay on the parameters the stage's `weight_decay_rule` names (clipav2.train.decay), optionally
a bfloat16 first moment (CLIPA's memory saving), and a linear-warmup + cosine-to-0 learning rate
counted in optimizer steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from clipav2.train.decay import decays


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """big_vision's warmup_cosine: 0 -> peak linearly over `warmup` steps, then cosine to 0 at
    `total`. `step` is the 0-based index of the optimizer step about to run."""
    if step < warmup:
        return peak * step / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, rule: str = "kernels") -> list[dict]:
    """Two groups (decay, no decay) by the weight decay `rule` (clipav2.train.decay), each
    parameter once, in model order (shared ones once)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if decays(name, rule) else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _local(t: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds (FSDP2 DTensor) or the tensor itself: the update is elementwise."""
    return t.to_local() if hasattr(t, "to_local") else t


class AdamWLowPrecisionMomentum(torch.optim.Optimizer):
    """AdamW (torch.optim.AdamW's update) whose first moment is stored in `momentum_dtype`
    (bfloat16 in CLIPA, optax's `mu_dtype`): the update uses the full-precision moment, the stored
    copy is rounded, as optax does. The second moment stays fp32. Works on plain tensors, FSDP2
    DTensors and DeepSpeed's flat partitions alike (elementwise ops only).

    Like torch's fused AdamW, it honours `optimizer.found_inf` (a 0-d device tensor, non-zero =
    skip, as GradScaler sets it): the parameters, moments and step count are left unchanged,
    decided on the device without a host sync. The step count lives on the parameter's device."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.momentum_dtype = momentum_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.momentum_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                if state["step"].device != p.device:  # a checkpoint written with the step on the CPU
                    state["step"] = state["step"].to(p.device)
                param, grad = _local(p), _local(p.grad).float()
                exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                skip = None if found_inf is None else found_inf.to(p.device).reshape(()) != 0
                state["step"] += 1 if skip is None else (~skip).float()
                t = state["step"].double()  # bias corrections in float64, as torch's python floats
                m = exp_avg.to(torch.float32, copy=True).lerp_(grad, 1 - b1)
                v = exp_avg_sq.mul(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v.sqrt() / (1 - b2**t).sqrt().float()).add_(eps)
                step_size = (lr / (1 - b1**t)).float()
                new = param.mul(1 - lr * wd).sub_(m.to(p.dtype) / denom.to(p.dtype) * step_size.to(p.dtype))
                if skip is not None:  # keep the old values where the step is skipped (NaN-safe select)
                    m, v, new = (torch.where(skip, old, x) for old, x in ((exp_avg.float(), m), (exp_avg_sq, v), (param, new)))
                exp_avg.copy_(m)
                exp_avg_sq.copy_(v)
                param.copy_(new)
        return loss


def skip_step_on_device(optimizer: torch.optim.Optimizer, skipped: torch.Tensor) -> None:
    """`optimizer.step()` unless the 0-d bool tensor `skipped` is set. Fused AdamW and
    AdamWLowPrecisionMomentum decide on the device (`found_inf`); any other optimizer needs the
    host to read `skipped` (one sync per step: prefer `parallel.fused_optimizer`)."""
    if isinstance(optimizer, AdamWLowPrecisionMomentum) or optimizer.defaults.get("fused"):
        optimizer.found_inf = skipped.float()
        optimizer.step()
    elif not bool(skipped):
        optimizer.step()


def build_optimizer(model: nn.Module, stage, bf16_momentum: bool = False, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over `model`'s trainable parameters with the stage's betas/eps/weight decay. The LR
    is set before every step by the strategy (`lr_at`), so it starts at the peak here."""
    groups = param_groups(model, stage.weight_decay, stage.weight_decay_rule)
    kwargs = dict(lr=stage.peak_lr, betas=tuple(stage.betas), eps=stage.eps)
    if bf16_momentum:
        return AdamWLowPrecisionMomentum(groups, **kwargs)
    return torch.optim.AdamW(groups, fused=fused or None, foreach=None if fused else True, **kwargs)
