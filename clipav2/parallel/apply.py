"""Memory and parallelism techniques as functions applied to a plain CLIP, in this order (the
shape torchtitan uses, torchtitan/models/llama3/infra/parallelize.py):

    apply_ac(model, "every_2")       # activation checkpointing of the transformer blocks
    apply_compile(model)             # torch.compile of each block for its static shapes
    apply_fsdp(model, ...) / apply_ddp(model, ...)

The model files know nothing of any of them: a block is a block. Each function works in place
and keeps parameter names, so checkpoints and exported weights do not depend on the techniques.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def towers(model) -> list[nn.Module]:
    """The two towers, each with its transformer blocks as `blocks` (an nn.ModuleList)."""
    out = []
    for name in ("visual", "text"):
        tower = getattr(model, name, None)
        if tower is None or not isinstance(getattr(tower, "blocks", None), nn.ModuleList):
            raise TypeError(f"the model needs model.{name}.blocks as an nn.ModuleList")
        out.append(tower)
    return out


def blocks(model) -> list[nn.Module]:
    return [b for tower in towers(model) for b in tower.blocks]


def checkpoint_flags(mode: str, depth: int) -> list[bool]:
    """Which blocks recompute their activations: "none", "all", or "every_<k>" (blocks k, 2k, ...
    counted from 1, torchtitan's `ac_freq` convention)."""
    if mode == "none":
        return [False] * depth
    if mode == "all":
        return [True] * depth
    k = mode[len("every_"):] if mode.startswith("every_") else ""
    if not k.isdigit() or int(k) < 1:
        raise ValueError(f"checkpointing: {mode!r} is not one of none, all, every_<k> (k >= 1)")
    return [(i + 1) % int(k) == 0 for i in range(depth)]


class _Recompute:
    """A block's `forward` that keeps no activations: non-reentrant torch.utils.checkpoint, which
    composes with torch.compile and FSDP2, recomputes them in the backward pass."""

    def __init__(self, forward):
        self.forward = forward

    def __call__(self, *args):
        if not torch.is_grad_enabled():
            return self.forward(*args)
        return checkpoint(self.forward, *args, use_reentrant=False)


def apply_ac(model, mode: str):
    """Activation checkpointing of the chosen blocks, in place (the blocks' parameter names do not
    change, so checkpoints and weight files are the same with and without it); returns `model`."""
    for tower in towers(model):
        for block, recompute in zip(tower.blocks, checkpoint_flags(mode, len(tower.blocks))):
            if recompute and not isinstance(block.forward, _Recompute):
                block.forward = _Recompute(block.forward)
    return model


# Graphs one process may hold for the blocks' shared code (dynamo's default is 8): two per stage
# (one per tower), and a stage whose micro-batch is halved after an out-of-memory trial adds two.
RECOMPILE_LIMIT = 32


def apply_compile(model):
    """torch.compile each transformer block in place (`nn.Module.compile`: parameter names do not
    change), for static shapes: every block of one tower runs one graph specialised to that
    tower's (micro-batch, tokens, width), compiled at its first call. The blocks of both towers
    share one code object, so without `dynamic=False` the text tower's first call would
    recompile the image tower's graph for a dynamic sequence length, and every later stage
    would run that slower dynamic graph. A stage change (image size, mask ratio, text length,
    micro-batch) compiles the new shapes once. Evaluation runs eager (`eager`), so its batch
    sizes compile nothing."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for block in blocks(model):
        block.compile(dynamic=False)
    return model


def compile_seconds() -> float:
    """Seconds torch.compile has spent in this process so far (dynamo, AOT autograd and inductor,
    forward and backward graphs): the difference across a step is that step's compile time."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def eager():
    """Context in which compiled blocks run their plain eager code and compile nothing: for
    evaluation, whose batch shapes (the class prompts, a last partial batch, the one-item
    placeholders) differ from training's and take a small share of the run's compute."""
    return torch.compiler.set_stance("force_eager")


def apply_ddp(model, device: torch.device):
    """DistributedDataParallel with gradients kept as views into the all-reduce buckets (no copy
    between `.grad` and the buckets, one gradient-sized buffer less)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        gradient_as_bucket_view=True,
    )


def apply_fsdp(model, mesh, param_dtype, reshard_after_forward: bool = True):
    """FSDP2 `fully_shard` on every block, then on each tower, then on the root. `param_dtype`
    (None or torch.bfloat16) applies to the towers; the root (the temperature alone) stays fp32,
    so the contrastive logits never see a bf16 temperature. Gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = dict(mesh=mesh, reshard_after_forward=reshard_after_forward)
    tower_mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for tower in towers(model):
        for block in tower.blocks:
            fully_shard(block, mp_policy=tower_mp, **kwargs)
        fully_shard(tower, mp_policy=tower_mp, **kwargs)
    return fully_shard(model, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32), **kwargs)


def bf16_tower_forward(model):
    """single and ddp under `bf16_params`: call `model` with the towers' parameters (and the float
    inputs) cast to bf16, as FSDP2's `param_dtype` does; gradients flow back into the fp32
    parameters through the cast. The temperature stays fp32."""
    from torch.func import functional_call

    from torch.nn.parallel import DistributedDataParallel

    ddp = isinstance(model, DistributedDataParallel)
    prefix, plain = ("module.", model.module) if ddp else ("", model)

    def forward(*args):
        cast = {prefix + n: p.to(torch.bfloat16) for n, p in plain.named_parameters() if n.startswith(("visual.", "text."))}
        args = [a.to(torch.bfloat16) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        return functional_call(model, cast, tuple(args), strict=False)

    return forward
