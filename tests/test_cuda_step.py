"""Our training step on one GPU, built as the benchmark and `clipav2 train` build it: no host
synchronisation inside it (CUDA's own sync detector set to raise), compiled blocks with
checkpointing agree with eager ones, fused AdamW skips a non-finite step on the device, and the
demo model in bf16 follows its float32 run over 20 steps. Skipped without CUDA."""
import contextlib

import pytest
import torch

from clipav2.config import load_config
from clipav2.parallel.env import World
from clipav2.perf import inputs
from clipav2.perf.ours import our_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def full_fp32():
    """float32 means float32 here (no TF32 in convolutions or matmuls), restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@contextlib.contextmanager
def host_syncs_raise():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _step(*overrides, model="tiny", micro=4, global_batch=4):
    """(step, batches) for one stage of `model` at 32 px, text 16, 25% of patches dropped."""
    cfg = load_config(None, [f"model.name={model}", "model.compile=false", "model.checkpointing=none",
                             "stages=[{name: s}]", "stages.s.image_size=32", "stages.s.text_len=16",
                             "stages.s.image_reduction=random", "stages.s.image_mask_ratio=0.25",
                             f"parallel.micro_batch={micro}", f"stages.s.global_batch={global_batch}",
                             f"stages.s.samples={global_batch * 100}", "stages.s.warmup_steps=0",
                             "stages.s.lr_base=1.0e-3", "parallel.strategy=single", *overrides], world_size=1)
    stage = cfg.stages[0]
    world = World(device=torch.device("cuda", 0))
    batches = inputs.synthetic_batches(micro, 32, 16, 1000, global_batch // micro, world.device, seed=1)
    return our_step(cfg, stage, world), batches


@pytest.mark.parametrize("global_batch", [4, 8], ids=["one micro-step", "accumulation"])
@pytest.mark.parametrize("optimizer", [["parallel.fused_optimizer=true"], ["parallel.bf16_momentum=true"]],
                         ids=["fused AdamW", "bf16 momentum"])
def test_the_step_never_syncs_the_host(optimizer, global_batch):
    step, batches = _step("parallel.precision=bf16_autocast", "stages.s.grad_clip=1.0", *optimizer, global_batch=global_batch)
    step(next(batches))  # first step: lazy state (optimizer moments, handles) is built here
    torch.cuda.synchronize()
    with host_syncs_raise():
        results = [step(next(batches)) for _ in range(2)]
    for r in results:
        r = r.to_host()
        assert r.loss > 0 and not r.skipped


def _losses(step, batches, n):
    return [step(next(batches)).to_host() for _ in range(n)]


def test_fused_adamw_skips_an_inf_step_on_the_device():
    """[good, inf, good] leaves weights and moments exactly as [good, good] does (the step count
    too, or the bias correction would differ), decided on the device."""
    from clipav2.optim import build_optimizer, skip_step_on_device

    stage = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=32",
                               "stages.s.weight_decay=0.2"]).stages[0]
    finals = []
    for pattern in ([False, True, False], [False, False]):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 8)).cuda()
        opt = build_optimizer(model, stage, fused=True)
        assert opt.defaults.get("fused"), "parallel.fused_optimizer did not give fused AdamW"
        x = torch.randn(64, 16, device="cuda")
        for bad in pattern:
            opt.zero_grad()
            (model(x).square().mean() * (float("inf") if bad else 1.0)).backward()
            with host_syncs_raise():
                found = torch.stack([p.grad.isfinite().all() for p in model.parameters()]).all().logical_not()
                skip_step_on_device(opt, found)
        finals.append((model.state_dict(), opt.state_dict()["state"]))
    (weights, state), (clean_weights, clean_state) = finals
    for key in weights:
        torch.testing.assert_close(weights[key], clean_weights[key], rtol=0, atol=0, msg=key)
    for index, moments in state.items():
        for name, value in moments.items():
            torch.testing.assert_close(value, clean_state[index][name], rtol=0, atol=0, msg=f"{index} {name}")
    assert float(state[0]["step"]) == 2


def test_demo_model_in_bf16_follows_fp32_over_20_steps():
    curves = {p: [r.loss for r in _losses(*_step(f"parallel.precision={p}", model="demo", micro=32, global_batch=32), 20)]
              for p in ("fp32", "bf16_autocast")}
    fp32, bf16 = curves["fp32"], curves["bf16_autocast"]
    assert fp32[0] == pytest.approx(bf16[0], rel=1e-2)  # the same weights, rounding only
    assert fp32[-1] < 0.8 * fp32[0] and bf16[-1] < 0.8 * bf16[0], curves  # both learn
    # bf16 rounding moves the trajectory a little at every step; it must not drift away
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.05 * fp32[0], curves


@pytest.mark.parametrize("checkpointing", ["all", "every_2"])
def test_compiled_checkpointed_blocks_match_eager(checkpointing):
    eager = _losses(*_step("parallel.precision=fp32"), 3)
    compiled = _losses(*_step("parallel.precision=fp32", "model.compile=true", f"model.checkpointing={checkpointing}"), 3)
    # step 1 sees the same weights: only kernel order differs; later steps inherit Adam's updates
    assert compiled[0].loss == pytest.approx(eager[0].loss, rel=1e-5)
    assert compiled[0].grad_norm == pytest.approx(eager[0].grad_norm, rel=1e-4)
    assert [r.loss for r in compiled] == pytest.approx([r.loss for r in eager], rel=1e-3)
