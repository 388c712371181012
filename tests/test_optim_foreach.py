"""The bf16-first-moment AdamW as torch's fused AdamW kernel on an fp32 copy of the moment: equal,
to an ulp or so of fp32 (the fused kernel's own association), to the per-tensor loop it replaced
(kept below as the reference, unchanged) over 20 steps with a skipped NaN step, with the stored
bf16 moment and step counts bit-identical; and a kernel count per optimizer step that does not
grow with the number of parameter tensors."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from clipav2 import optim
from clipav2.optim import AdamWLowPrecisionMomentum, _local


class PerTensorReference(torch.optim.Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_dtype=torch.bfloat16):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.momentum_dtype = momentum_dtype
    @torch.no_grad()
    def step(self):  # the implementation before the foreach rewrite, verbatim
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None: continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, dtype=self.momentum_dtype)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                param, grad = _local(p), _local(p.grad).float()
                exp_avg, exp_avg_sq = _local(state["exp_avg"]), _local(state["exp_avg_sq"])
                skip = None if found_inf is None else found_inf.to(p.device).reshape(()) != 0
                state["step"] += 1 if skip is None else (~skip).float()
                t = state["step"].double()
                m = exp_avg.to(torch.float32, copy=True).lerp_(grad, 1 - b1)
                v = exp_avg_sq.mul(b2).addcmul_(grad, grad, value=1 - b2)
                denom = (v.sqrt() / (1 - b2**t).sqrt().float()).add_(eps)
                step_size = (lr / (1 - b1**t)).float()
                new = param.mul(1 - lr * wd).sub_(m.to(p.dtype) / denom.to(p.dtype) * step_size.to(p.dtype))
                if skip is not None:
                    m, v, new = (torch.where(skip, old, x) for old, x in ((exp_avg.float(), m), (exp_avg_sq, v), (param, new)))
                exp_avg.copy_(m); exp_avg_sq.copy_(v); param.copy_(new)


SHAPES = [(64, 33), (33,), (7, 5, 3), (1,)]


def _run(cls, steps=20, skip_at=5):
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in SHAPES]
    opt = cls([{"params": ps[:2], "weight_decay": 0.2}, {"params": ps[2:], "weight_decay": 0.0}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    # Gradients that do not depend on the parameters: the fused kernel rounds the update differently
    # per CPU instruction set (vector width, FMA), and gradients computed from the parameters would
    # feed that ulp back and grow it step by step (to ~30 ulp of exp_avg_sq in 20 steps on AVX-512).
    gen = torch.Generator().manual_seed(1)
    for i in range(steps):
        for j, p in enumerate(ps):
            p.grad = torch.randn(p.shape, generator=gen) * 10.0 ** (j - 2)  # magnitudes 1e-2 .. 10
            if i == skip_at:
                p.grad[..., 0] = float("nan")
        opt.found_inf = torch.tensor(float(i == skip_at))
        for g in opt.param_groups:
            g["lr"] = 1e-2 * (1 - i / steps)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("chunk", [1 << 26, 100])  # one chunk; then the fp32 moment in four
def test_fused_update_matches_the_per_tensor_loop(chunk, monkeypatch):
    monkeypatch.setattr(optim, "_FP32_MOMENT_CHUNK", chunk)
    (ours, opt), (theirs, ref) = _run(AdamWLowPrecisionMomentum), _run(PerTensorReference)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=2e-7, atol=1e-7)  # ~1 ulp of values of order 1
        torch.testing.assert_close(opt.state[a]["exp_avg_sq"], ref.state[b]["exp_avg_sq"], rtol=3e-7, atol=0)  # 2 ulp
        for key in ("exp_avg", "step"):  # the same bf16 rounding of the same fp32 moment
            assert torch.equal(opt.state[a][key], ref.state[b][key]), key
    assert opt.state[ours[0]]["exp_avg"].dtype == torch.bfloat16
    assert opt.state[ours[0]]["step"].item() == 19  # the NaN step was not counted


class _Count(TorchDispatchMode):
    """Ops that run a kernel: allocations (the fp32 moment's buffers, one per tensor) launch none."""
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += func is not torch.ops.aten.empty_like.default
        return func(*args, **(kwargs or {}))


def _dispatches(n_tensors: int, found_inf: bool) -> int:
    ps = [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(n_tensors)]
    opt = AdamWLowPrecisionMomentum([{"params": ps, "weight_decay": 0.1}], lr=1e-3)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()  # state built
    if found_inf:
        opt.found_inf = torch.tensor(0.0)
    with _Count() as count:
        opt.step()
    return count.ops


def test_kernels_per_step_do_not_grow_with_the_tensor_count():
    for found_inf in (False, True):
        few, many = _dispatches(4, found_inf), _dispatches(64, found_inf)
        assert few == many, (found_inf, few, many)
        assert many <= 10, many  # one group: step count, moment up, fused AdamW, moment down (+ skip)
