"""The optimizer's cost, in one run: (1) the demo model's training step with the bf16 first moment
on and off, timed alternately in one process so both see the same machine; (2) the ops one
optimizer step dispatches for the demo model and ViT-H-14-CLIPA (built on the meta device), for
fused AdamW, our foreach bf16-momentum AdamW, and the per-tensor loop it replaced (counted as
ops per tensor x tensors: measured on one tensor).

    python tools/bench_optimizer.py [--steps 20] [--rounds 3]
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipav2 import create_model  # noqa: E402
from clipav2.config import load_config  # noqa: E402
from clipav2.optim import AdamWLowPrecisionMomentum, param_groups, skip_step_on_device  # noqa: E402
from clipav2.parallel.env import World  # noqa: E402
from clipav2.perf.inputs import synthetic_batches  # noqa: E402
from clipav2.perf.ours import our_step  # noqa: E402


class Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def dispatches(model, make, skip: bool) -> int:
    """Ops one step dispatches; `skip`: with the device-side skip flag (`found_inf`), as training runs."""
    opt = make(param_groups(model, 0.2))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    flag = torch.zeros((), dtype=torch.bool, device=next(model.parameters()).device)
    run = (lambda: skip_step_on_device(opt, flag)) if skip else opt.step
    run()  # state built
    with Count() as c:
        run()
    return c.ops


def per_tensor_loop_ops() -> int:
    """The replaced loop's ops for one tensor with the device-side skip (its cost scaled linearly)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_optim_foreach import PerTensorReference

    w = torch.nn.Parameter(torch.randn(4, 4))
    opt = PerTensorReference([w], lr=1e-3)
    w.grad = torch.randn_like(w)
    opt.step()
    opt.found_inf = torch.tensor(0.0)
    with Count() as c:
        opt.step()
    return c.ops


def dispatch_table():
    loop = per_tensor_loop_ops()
    print("optimizer step: dispatched ops (skip = with the device-side skip flag, as training runs; the meta")
    print("device cannot run the flag's 0-d tensor operands, and the count depends on the parameter groups only)")
    print(f"{'model':<16} {'tensors':>7} {'fused AdamW':>11} {'bf16 foreach':>12} {'+ skip':>7} {'old bf16 loop + skip':>21}")
    for name, device in (("demo", "cpu"), ("ViT-H-14-CLIPA", "meta")):
        with torch.device(device):
            model = create_model(name)
        n = sum(1 for _ in model.parameters())
        cpu = device == "cpu"
        fused = dispatches(model, lambda g: torch.optim.AdamW(g, lr=1e-3, fused=True), skip=True) if cpu else "n/a"
        ours = dispatches(model, lambda g: AdamWLowPrecisionMomentum(g, lr=1e-3), skip=False)
        skipping = dispatches(model, lambda g: AdamWLowPrecisionMomentum(g, lr=1e-3), skip=True) if cpu else "n/a"
        print(f"{name:<16} {n:>7} {fused:>11} {ours:>12} {skipping:>7} {loop * n:>21}")


def throughput(steps: int, rounds: int):
    world = World()
    runs = {}
    for bf16 in (False, True):
        cfg = load_config("configs/demo.yaml", [f"parallel.bf16_momentum={str(bf16).lower()}", "stages.pretrain.warmup_steps=0"])
        stage = cfg.stages[0]
        micro = cfg.parallel.micro_batch
        runs[bf16] = (our_step(cfg, stage, world),
                      synthetic_batches(micro, stage.image_size, stage.text_len, 32000, 1, world.device, seed=1), micro)
    for step, batches, _ in runs.values():  # warm-up
        for _ in range(3):
            step(next(batches))
    times = {False: 0.0, True: 0.0}
    for _, bf16 in itertools.product(range(rounds), (False, True)):
        step, batches, micro = runs[bf16]
        t = time.perf_counter()
        for _ in range(steps):
            step(next(batches)).to_host()
        times[bf16] += time.perf_counter() - t
    sps = {k: rounds * steps * runs[k][2] / v for k, v in times.items()}
    print(f"demo model, pretrain stage, micro-batch {runs[False][2]}, {torch.get_num_threads()} threads, "
          f"{rounds} alternating rounds of {steps} steps")
    print(f"  fused AdamW (bf16 momentum off): {sps[False]:.1f} samples/s")
    print(f"  bf16-momentum foreach AdamW (on): {sps[True]:.1f} samples/s")
    print(f"  on / off = {sps[True] / sps[False]:.3f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    dispatch_table()
    throughput(a.steps, a.rounds)
