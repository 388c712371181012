"""No host synchronisation inside the step (docs/engine.md): the skip decision is made on the device and
honoured by the optimizer, the skip counters stay on the device and miss no run of skips when
read only every few steps, and the host reads results in one copy."""
import random

import pytest
import torch

import clipav2
from clipav2.config import load_config
from clipav2.loss import clip_loss
from clipav2.stage import resolve
from clipav2.train.step import StepResult, TrainStep, to_host
from clipav2.parallel.env import World
from nosync import HostSyncError, forbid_host_sync
from clipav2.train.skips import SkipCounter
from clipav2.optim import AdamWLowPrecisionMomentum, skip_step_on_device


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """A tiny model: 2 intra-op threads on a busy 2-core machine cost 100x in contention."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def test_forbid_host_sync_catches_reads_and_restores_them():
    t = torch.ones(())
    for read in (lambda: t.item(), lambda: t.tolist(), lambda: bool(t), lambda: float(t), lambda: int(t), lambda: t.numpy()):
        with forbid_host_sync(), pytest.raises(HostSyncError):
            read()
    assert t.item() == 1.0 and bool(t) and float(t) == 1.0  # restored afterwards


def _strategy(*overrides):
    cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=4", "parallel.micro_batch=2",
                             "parallel.precision=fp32", "stages.s.image_size=32", "stages.s.text_len=16",
                             "stages.s.warmup_steps=0", *overrides])
    torch.manual_seed(0)
    return TrainStep(cfg, resolve(cfg, 0, 1), World(), clipav2.create_model("tiny"))


def _steps(s, nan_steps=(), n=3):
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 3, 32, 32, generator=g), torch.randint(1, 1000, (2, 16), generator=g)
    results = []
    for step in range(n):
        calls = []

        def loss(*args):  # NaN in the second of the 2 micro-steps of 2 samples
            calls.append(1)
            return clip_loss(*args) * (float("nan") if step in nan_steps and len(calls) == 2 else 1.0)

        results.append(s([(x, t, None)] * s.stage.grad_accum, loss)[0])
    return results


@pytest.mark.parametrize("overrides", [[], ["parallel.bf16_momentum=true", "stages.s.grad_clip=0.5"]])
def test_a_step_never_reads_a_tensor_on_the_host(overrides):
    s = _strategy(*overrides)
    with forbid_host_sync():
        results = _steps(s, nan_steps=(1,))
    assert all(isinstance(r.loss, torch.Tensor) and isinstance(r.skipped, torch.Tensor) for r in results)
    assert [r.skipped for r in to_host(results)] == [False, True, False]


def test_the_check_fails_for_an_optimizer_that_needs_the_host():
    s = _strategy("parallel.fused_optimizer=false")  # foreach AdamW: no device-side skip
    with forbid_host_sync(), pytest.raises(HostSyncError):
        _steps(s, n=1)


@pytest.mark.parametrize("overrides", [[], ["parallel.bf16_momentum=true"]])
def test_a_skipped_step_changes_nothing(overrides):
    """Weights and optimizer state after [good, NaN, good] equal those after [good, good]: the
    NaN step touched neither (Adam's step count included, or the bias correction would differ)."""
    skipped, clean = _strategy(*overrides), _strategy(*overrides)
    for s in (skipped, clean):
        s.lr = lambda: 1e-3  # the schedule moves on with a skipped step: hold the LR
    _steps(skipped, nan_steps=(1,), n=3)
    _steps(clean, n=2)
    for (k, a), b in zip(skipped.engine.model.state_dict().items(), clean.engine.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    for p_a, p_b in zip(skipped.engine.module.parameters(), clean.engine.module.parameters()):
        for key, value in skipped.optimizer.state[p_a].items():
            torch.testing.assert_close(value, clean.optimizer.state[p_b][key], rtol=0, atol=0, msg=key)


def test_bf16_momentum_optimizer_skips_on_found_inf_like_fused_adamw():
    """The same sequence with a skipped step in the middle, through torch's fused AdamW and ours
    (fp32 moment): both honour `found_inf` and agree."""
    finals = []
    for make in (lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.2, fused=True),
                 lambda ps: AdamWLowPrecisionMomentum(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.2, momentum_dtype=torch.float32)):
        torch.manual_seed(0)
        w = torch.nn.Parameter(torch.randn(6, 5))
        opt = make([w])
        for i, skip in enumerate([False, True, False, False]):
            w.grad = torch.full_like(w, float("nan")) if skip else torch.sin(w.detach() * (i + 1))
            skip_step_on_device(opt, torch.tensor(skip))
        finals.append((w.detach().clone(), float(opt.state[w]["step"])))
    (ours, our_steps), (theirs, their_steps) = finals[1], finals[0]
    assert our_steps == their_steps == 3
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)


def _longest_runs(flags, reads):
    """Host truth: per read, (longest run of True since the previous read, counting a run that
    started earlier and goes on, its first 1-based step)."""
    out, run, first, prev = [], 0, 0, 0
    best = (0, 0)
    for i, f in enumerate(flags, start=1):
        run = run + 1 if f else 0
        first = i if run == 1 else first
        if run > best[0]:
            best = (run, first)
        if i in reads:
            out.append(best)
            best = (run, first) if run else (0, 0)
            prev = i
    return out


def test_skip_counter_misses_no_run_between_reads():
    rng = random.Random(0)
    flags = [rng.random() < 0.4 for _ in range(200)]
    reads = set(range(7, 201, 7)) | {200}
    counter = SkipCounter("cpu")
    got = []
    for step, f in enumerate(flags, start=1):
        counter.update(torch.tensor(f), step)
        if step in reads:
            r = counter.read()
            got.append((r.longest_run, r.longest_run_first_step if r.longest_run else 0))
    assert got == _longest_runs(flags, reads)
    assert r.total == sum(flags)
    assert max(n for n, _ in got) >= 4  # long runs were there to be missed


def test_skip_counter_survives_a_checkpoint():
    a = SkipCounter("cpu")
    for step, f in enumerate([True, False, True, True], start=1):
        a.update(f, step)
    b = SkipCounter("cpu")
    b.load_state_dict(a.state_dict())
    for c in (a, b):
        c.update(True, 5)
    assert a.read() == b.read() and b.read().current_run == 3


def test_to_host_reads_everything_in_plain_types():
    r = StepResult(lr=0.5, grad_norm=torch.tensor(2.0), skipped=torch.tensor(True), loss=torch.tensor(1.5))
    h = r.to_host()
    assert (h.lr, h.grad_norm, h.skipped, h.loss) == (0.5, 2.0, True, 1.5)
    assert type(h.skipped) is bool and type(h.loss) is float
    assert StepResult(lr=1.0, grad_norm=3.0, skipped=False, loss=2.0).to_host().grad_norm == 3.0
