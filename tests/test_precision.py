"""The precision policies on the CPU at tiny size: fp32, bf16_autocast (fp32 parameters and
residual stream, bf16 matmuls, as CLIPA's JAX code ran) and bf16_params (the towers' parameters
cast to bf16) train the same 20 steps (2 micro-steps each) to losses that agree within bf16
tolerance, with fp32 master weights throughout."""
import pytest
import torch

import clipav2
from clipav2.config import load_config
from clipav2.parallel.env import World
from clipav2.stage import resolve
from clipav2.train.step import TrainStep

pytestmark = pytest.mark.slow  # multi-process or a whole training run

STEPS = 20


def _losses(precision):
    cfg = load_config(None, ["stages=[{name: s}]", f"stages.s.samples={16 * STEPS}", "stages.s.global_batch=16",
                             "parallel.micro_batch=8", f"parallel.precision={precision}", "stages.s.image_size=32",
                             "stages.s.text_len=16", "stages.s.lr_base=1e-3", "stages.s.lr_base_batch=16",
                             "stages.s.warmup_steps=2"])
    torch.manual_seed(0)
    strategy = TrainStep(cfg, resolve(cfg, 0, 1), World(), clipav2.create_model("tiny"))
    g = torch.Generator().manual_seed(1)
    images, ids = torch.randn(64, 3, 32, 32, generator=g), torch.randint(1, 32000, (64, 16), generator=g)
    out = []
    for step in range(STEPS):
        lo = (step % 4) * 16
        inputs = [(images[lo + i : lo + i + 8], ids[lo + i : lo + i + 8], None) for i in (0, 8)]
        out.append(strategy(inputs)[0].to_host().loss)
    return out, strategy


@pytest.fixture(scope="module")
def runs():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {p: _losses(p) for p in ("fp32", "bf16_autocast", "bf16_params")}
    finally:
        torch.set_num_threads(saved)


@pytest.mark.parametrize("policy", ["bf16_autocast", "bf16_params"])
def test_bf16_policies_track_fp32_within_bf16_tolerance(runs, policy):
    ref, _ = runs["fp32"]
    ours, _ = runs[policy]
    assert ref[0] - ref[-1] > 0.1  # it trains: the comparison is not vacuous
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert abs(a - b) <= 1e-2 * abs(b), (step, a, b)  # bf16 has 8 bits of mantissa; measured <= 0.3%


def test_the_policies_really_differ(runs):
    """Each bf16 policy changes the numbers (the casts happen), and differently."""
    ref, autocast, params = runs["fp32"][0], runs["bf16_autocast"][0], runs["bf16_params"][0]
    assert autocast != ref and params != ref and autocast != params


def test_master_weights_and_temperature_stay_fp32(runs):
    for policy in ("bf16_autocast", "bf16_params"):
        _, strategy = runs[policy]
        assert all(p.dtype == torch.float32 for p in strategy.engine.module.parameters())


@pytest.mark.parametrize("policy, residual", [("bf16_autocast", torch.float32), ("bf16_params", torch.bfloat16)])
def test_the_residual_stream_dtype_of_each_policy(policy, residual):
    """What every block of both towers receives: fp32 under bf16_autocast (CLIPA's JAX numerics;
    autocast's bf16 patch convolution is cast back), bf16 under bf16_params."""
    cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=16", "stages.s.global_batch=8",
                             "parallel.micro_batch=8", f"parallel.precision={policy}", "stages.s.image_size=32",
                             "stages.s.text_len=16"])
    engine = TrainStep(cfg, resolve(cfg, 0, 1), World(), clipav2.create_model("tiny")).engine
    seen = {}
    for tower in ("visual", "text"):
        for i, block in enumerate(getattr(engine.module, tower).blocks):
            block.register_forward_pre_hook(lambda _, args, key=(tower, i): seen.__setitem__(key, args[0].dtype))
    with engine.autocast():
        image, text, _ = engine.model(torch.randn(2, 3, 32, 32), torch.randint(1, 32000, (2, 16)))
    assert len(seen) == 4 and set(seen.values()) == {residual}, seen
