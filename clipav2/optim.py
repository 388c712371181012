"""The optimizer of CLIPA-v2 (clipa_jax/main.py, optax): AdamW with betas (0.9, 0.95), eps 1e-8, decoupled weight
decay on the parameters the stage's `weight_decay_rule` names (clipav2.decay), optionally
a bfloat16 first moment (CLIPA's memory saving), and a linear-warmup + cosine-to-0 learning rate
counted in optimizer steps.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from clipav2 import compat
from clipav2.compat import fused_adamw_
from clipav2.decay import decays


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """big_vision's warmup_cosine: 0 -> peak linearly over `warmup` steps, then cosine to 0 at
    `total`. `step` is the 0-based index of the optimizer step about to run."""
    if step < warmup:
        return peak * step / warmup
    span = max(total - warmup, 1)
    progress = min((step - warmup) / span, 1.0)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, rule: str = "kernels") -> list[dict]:
    """Two groups (decay, no decay) by the weight decay `rule` (clipav2.decay), each
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
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._update(group, params, found_inf)
        return loss

    def _state(self, params) -> list[dict]:
        states = []
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                state["exp_avg"] = torch.zeros_like(p, dtype=self.momentum_dtype)
                state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
            if state["step"].device != p.device:  # a checkpoint written with the step on the CPU
                state["step"] = state["step"].to(p.device)
            states.append(state)
        return states

    def _update(self, group, params, found_inf) -> None:
        """One group's update as torch's fused AdamW kernel (one pass over each tensor, CPU and
        CUDA alike) on an fp32 copy of the first moment, which is then rounded back into the
        stored bf16 moment: three passes in all, a few kernels per chunk however many tensors it
        has. The fp32 copy is made for at most `_FP32_MOMENT_CHUNK` elements at a time, so the
        transient memory stays bounded. The fused kernel skips on `found_inf` on the device
        (the copy then holds the old moment exactly), and the step counts are rolled back with
        it, as torch's fused AdamW does."""
        states = self._state(params)
        if any(p.dtype != torch.float32 for p in params):
            raise TypeError("AdamWLowPrecisionMomentum updates fp32 (master) parameters only")
        param = [_local(p) for p in params]
        grad = [_local(p.grad).float() if p.grad.dtype != torch.float32 else _local(p.grad) for p in params]
        exp_avg = [_local(s["exp_avg"]) for s in states]
        exp_avg_sq = [_local(s["exp_avg_sq"]) for s in states]
        steps = [s["step"] for s in states]
        skip = None if found_inf is None else found_inf.to(param[0].device).reshape(()).float()
        torch._foreach_add_(steps, 1)
        (b1, b2), hyper = group["betas"], dict(lr=group["lr"], eps=group["eps"], weight_decay=group["weight_decay"])
        for part in _chunks(param, _FP32_MOMENT_CHUNK):
            moment = [torch.empty_like(exp_avg[i], dtype=torch.float32) for i in part]
            torch._foreach_copy_(moment, [exp_avg[i] for i in part])
            fused_adamw_([param[i] for i in part], [grad[i] for i in part], moment, [exp_avg_sq[i] for i in part],
                         [steps[i] for i in part], beta1=b1, beta2=b2, found_inf=skip, **hyper)
            torch._foreach_copy_([exp_avg[i] for i in part], moment)  # round to nearest even, as optax's cast
        if skip is not None:
            torch._foreach_sub_(steps, [skip] * len(steps))


_FP32_MOMENT_CHUNK = 1 << 26  # elements (256 MB as fp32): the transient fp32 first moment


def _chunks(tensors: list[torch.Tensor], limit: int) -> list[range]:
    """Consecutive index ranges of `tensors`, each of at most `limit` elements (or one tensor)."""
    parts, start, size = [], 0, 0
    for i, t in enumerate(tensors):
        if size and size + t.numel() > limit:
            parts.append(range(start, i))
            start, size = i, 0
        size += t.numel()
    parts.append(range(start, len(tensors)))
    return parts


def skip_step_on_device(optimizer: torch.optim.Optimizer, skipped: torch.Tensor) -> None:
    """`optimizer.step()` unless the 0-d bool tensor `skipped` is set. Fused AdamW and
    AdamWLowPrecisionMomentum decide on the device (`found_inf`); any other optimizer needs the
    host to read `skipped` (one sync per step: prefer `parallel.fused_optimizer`)."""
    if isinstance(optimizer, AdamWLowPrecisionMomentum) or optimizer.defaults.get("fused"):
        compat.set_found_inf(optimizer, skipped)
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
