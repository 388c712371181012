"""AdamW grouping, the bf16-momentum AdamW against torch's, the warmup+cosine schedule, and bad
configurations rejected before a model is built."""
import math

import pytest
import torch

import clipav2
from clipav2.config import ConfigError, StageConfig, load_config
from clipav2.parallel import build_strategy
from clipav2.launcher import first_host, launcher_env
from clipav2.parallel.env import World
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


def _cfg(*overrides):
    return load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=16", "parallel.micro_batch=4", *overrides])


@pytest.mark.parametrize(
    "overrides,world,key",
    [
        (["parallel.strategy=megatron"], 2, "parallel.strategy"),
        (["parallel.strategy=deepspeed", "parallel.zero_stage=4"], 2, "parallel.zero_stage"),
        (["parallel.strategy=ddp"], 3, "stages.s.global_batch"),
        (["parallel.strategy=ddp", "parallel.grad_accum=3"], 2, "stages.s.global_batch"),
        (["parallel.strategy=single"], 2, "parallel.strategy"),
        (["parallel.strategy=fsdp", "parallel.hsdp_shard_size=3"], 4, "parallel.hsdp_shard_size"),
    ],
)
def test_bad_configuration_fails_before_a_model_exists(overrides, world, key, monkeypatch):
    built = []
    monkeypatch.setattr(clipav2, "create_model", lambda *a, **k: built.append(1))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=16", "parallel.micro_batch=4", *overrides])
        build_strategy(cfg, World(world_size=world))
    assert not built


def test_good_configuration_passes():
    _cfg("parallel.strategy=ddp").validate(2)


def test_launcher_environments():
    assert launcher_env({}) is None
    torchrun = launcher_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (torchrun["rank"], torchrun["world_size"], torchrun["local_rank"]) == (3, 4, 1)
    slurm = launcher_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_NODELIST": "gpu[07-08]"})
    assert (slurm["rank"], slurm["world_size"], slurm["local_rank"], slurm["master_addr"]) == (5, 16, 5, "gpu07")
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # an salloc shell
    assert first_host("a1,b2") == "a1" and first_host("n[3,5-6]") == "n3"
