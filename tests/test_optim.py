"""clipav2/optim.py: AdamW grouping, the bf16-momentum AdamW against torch's, the warmup+cosine
schedule."""
import math

import pytest
import torch

import clipav2
from clipav2.config import StageConfig
from clipav2.optim import AdamWLowPrecisionMomentum, build_optimizer, lr_at, param_groups


def test_weight_decay_on_weight_matrices_only():
    model = clipav2.create_model("tiny")
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "visual.blocks.0.attn.qkv.weight" in decayed and "visual.patch_embed.weight" in decayed
    for exempt in ("logit_scale", "visual.class_token", "text.token_embed.weight", "text.pos_embed", "visual.blocks.0.norm1.weight", "visual.blocks.0.attn.qkv.bias"):
        assert exempt not in decayed, exempt
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert decay["weight_decay"] == 0.2 and no_decay["weight_decay"] == 0.0


def _train(opt_cls, steps=5, **kw):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(6, 5))
    opt = opt_cls([{"params": [w], "weight_decay": 0.2}], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, **kw)
    for i in range(steps):
        w.grad = torch.sin(w.detach() * (i + 1))
        opt.step()
    return w.detach(), opt


def test_adamw_with_fp32_momentum_equals_torch_adamw():
    ours, _ = _train(AdamWLowPrecisionMomentum, momentum_dtype=torch.float32)
    theirs, _ = _train(torch.optim.AdamW)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def test_bf16_momentum_is_stored_in_bf16_and_stays_close():
    ours, opt = _train(AdamWLowPrecisionMomentum)
    theirs, _ = _train(torch.optim.AdamW)
    state = next(iter(opt.state.values()))
    assert state["exp_avg"].dtype == torch.bfloat16 and state["exp_avg_sq"].dtype == torch.float32
    assert (ours - theirs).abs().max() < 1e-3 and (ours - theirs).abs().max() > 0


def test_build_optimizer_uses_the_stage_hyperparameters():
    stage = StageConfig(samples=1024, global_batch=256, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.2)
    opt = build_optimizer(clipav2.create_model("tiny"), stage)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["eps"] == 1e-8
    assert isinstance(build_optimizer(clipav2.create_model("tiny"), stage, bf16_momentum=True), AdamWLowPrecisionMomentum)


def test_warmup_then_cosine_to_zero():
    peak, warmup, total = 2.0, 4, 20
    assert [lr_at(s, peak, warmup, total) for s in range(5)] == [0.0, 0.5, 1.0, 1.5, 2.0]
    mid = warmup + (total - warmup) // 2
    assert lr_at(mid, peak, warmup, total) == pytest.approx(1.0)
    assert lr_at(total, peak, warmup, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(7, peak, 0, total) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 7 / 20)))
