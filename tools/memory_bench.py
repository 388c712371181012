"""Per-rank bytes of parameters, gradients and optimizer state for each strategy (model states
only: activations, buffers, communication buckets and FSDP's transient unsharded block excluded).

    python tools/memory_bench.py --model ViT-H-14-CLIPA --world 2 [--bf16-momentum]

The parameter count comes from the real model built on the meta device; the per-strategy bytes
are arithmetic, which tests/test_parallel_memory.py checks against a real model and optimizer.
"""
import argparse

import torch

GiB = 2**30


def count_params(name: str) -> int:
    import clipav2

    with torch.device("meta"):
        model = clipav2.create_model(name)
    return sum(p.numel() for p in model.parameters())


def per_rank_bytes(n: int, world: int, strategy: str, bf16: bool = True, bf16_momentum: bool = False) -> dict:
    """{params, grads, optimizer} bytes on one rank. bf16: the GPU recipe (fp32 masters);
    optimizer = Adam moments (+ DeepSpeed's fp32 master copy, which lives in its optimizer)."""
    moments = (2 if bf16_momentum else 4) + 4
    low = 2 if bf16 else 4
    if strategy in ("single", "ddp"):  # fp32 weights under autocast, full replica everywhere
        return {"params": 4 * n, "grads": 4 * n, "optimizer": moments * n}
    if strategy == "fsdp":  # fp32 sharded master weights; bf16 copies exist one block at a time
        return {"params": 4 * n / world, "grads": 4 * n / world, "optimizer": moments * n / world}
    master = (4 if bf16 else 0) * n / world  # DeepSpeed keeps fp32 masters beside bf16 weights
    zero = int(strategy[-1])
    return {
        "params": low * n / (world if zero >= 3 else 1),
        "grads": low * n / (world if zero >= 2 else 1),
        "optimizer": moments * n / world + master,
    }


STRATEGIES = ["ddp", "fsdp", "zero1", "zero2", "zero3"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-H-14-CLIPA")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--bf16-momentum", action="store_true")
    a = ap.parse_args()
    n = count_params(a.model)
    print(f"{a.model}: {n:,} parameters, {a.world} ranks, bf16 compute, "
          f"{'bf16' if a.bf16_momentum else 'fp32'} first moment; GiB per rank")
    print(f"{'strategy':10} {'params':>8} {'grads':>8} {'optimizer':>10} {'total':>8} {'vs ddp':>7}")
    ddp = sum(per_rank_bytes(n, a.world, "ddp", True, a.bf16_momentum).values())
    for s in STRATEGIES:
        b = per_rank_bytes(n, a.world, s, True, a.bf16_momentum)
        total = sum(b.values())
        print(f"{s:10} {b['params'] / GiB:8.2f} {b['grads'] / GiB:8.2f} {b['optimizer'] / GiB:10.2f} {total / GiB:8.2f} {total / ddp:7.2f}")


if __name__ == "__main__":
    main()
