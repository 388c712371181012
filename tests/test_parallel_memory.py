"""The memory benchmark's arithmetic against the bytes a real model and optimizer hold."""
import sys
from pathlib import Path

import torch

import clipav2
from clipav2.config import StageConfig
from clipav2.loss import clip_loss
from clipav2.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).parents[1] / "tools"))
import memory_bench  # noqa: E402


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def test_arithmetic_matches_a_real_model_and_optimizer():
    for bf16_momentum in (False, True):
        model = clipav2.create_model("tiny")
        opt = build_optimizer(model, StageConfig(samples=8, global_batch=4), bf16_momentum=bf16_momentum)
        x, t = torch.randn(4, 3, 32, 32), torch.randint(0, 32000, (4, 16))
        clip_loss(*model(x, t)).backward()
        opt.step()
        n = memory_bench.count_params("tiny")
        assert n == sum(p.numel() for p in model.parameters())
        real = {
            "params": _nbytes(model.parameters()),
            "grads": _nbytes(p.grad for p in model.parameters()),
            "optimizer": _nbytes(v for s in opt.state.values() for k, v in s.items() if k != "step"),
        }
        assert real == memory_bench.per_rank_bytes(n, 1, "single", bf16=False, bf16_momentum=bf16_momentum)


def test_sharded_strategies_hold_about_half_of_ddp_at_two_ranks():
    n = 10**9
    ddp = sum(memory_bench.per_rank_bytes(n, 2, "ddp").values())
    for s in ("fsdp", "zero3"):
        assert 0.45 <= sum(memory_bench.per_rank_bytes(n, 2, s).values()) / ddp <= 0.6, s
