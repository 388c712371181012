"""`fsdp`: FSDP2 `fully_shard` on every block of both towers, then on the root, so each rank holds
1/world of the parameters, gradients and AdamW state (about half of DDP's bytes at 2 ranks).

- bf16: `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`; the sharded master weights
  stay fp32.
- 0-d parameters (the temperature) are left out of sharding (`ignored_params`), so they are
  computed in fp32 whatever the policy; their gradients are averaged over the ranks here.
- HSDP: `parallel.hsdp_shard_size` = GPUs per shard group (e.g. 8 per node) gives a 2-D mesh
  (replicate x shard).
- Checkpoints: torch.distributed.checkpoint, resharded on load, so a run may resume on another
  world size.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from clipav2.parallel.native import SingleStrategy


def block_lists(model) -> list:
    """The transformer blocks sharded one by one (model.visual.blocks, model.text.blocks)."""
    blocks = []
    for tower in ("visual", "text"):
        mod = getattr(model, tower, None)
        if mod is None or not isinstance(getattr(mod, "blocks", None), torch.nn.ModuleList):
            raise TypeError(f"fsdp: the model needs model.{tower}.blocks as an nn.ModuleList")
        blocks.extend(mod.blocks)
    return blocks


class FSDPStrategy(SingleStrategy):
    name = "fsdp"

    def _mesh(self):
        world, shard = self.world.world_size, self.cfg.parallel.hsdp_shard_size
        device_type = self.world.device.type
        if shard is None or shard >= world:
            return init_device_mesh(device_type, (world,))
        if world % shard:
            raise ValueError(f"parallel.hsdp_shard_size: {shard} does not divide the world size {world}")
        return init_device_mesh(device_type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))

    def _distribute(self, model):
        bf16 = self.precision == "bf16"
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None, reduce_dtype=torch.float32)
        mesh = self._mesh()
        self.scalars = [p for p in model.parameters() if p.ndim == 0]
        kwargs = dict(mesh=mesh, reshard_after_forward=self.cfg.parallel.reshard_after_forward, mp_policy=mp)
        for block in block_lists(model):
            fully_shard(block, **kwargs)
        return fully_shard(model, ignored_params=set(self.scalars), **kwargs)

    def autocast(self):  # FSDP's policy casts the parameters itself
        return torch.autocast(self.world.device.type, enabled=False)

    def _backward(self, loss, micro_index, n_micro):
        self.model.set_requires_gradient_sync(micro_index == n_micro - 1)
        (loss / n_micro).backward()

    def _grad_norm(self):
        for p in self.scalars:  # not managed by FSDP: average their gradients ourselves
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= self.world.world_size
        grads = self._grads()
        sharded = [g for g in grads if isinstance(g, DTensor)]
        plain = [g for g in grads if not isinstance(g, DTensor)]
        norms = []
        if sharded:
            norms.append(torch.nn.utils.get_total_norm(sharded).full_tensor())
        if plain:
            norms.append(torch.nn.utils.get_total_norm(plain))
        return torch.linalg.vector_norm(torch.stack(norms))

    def _clip(self, norm):
        # clip_grads_with_norm_ wants one tensor type per call: sharded and ignored separately
        sharded = [p for p in self.module.parameters() if isinstance(p, DTensor)]
        for params in (sharded, self.scalars):
            if params:
                torch.nn.utils.clip_grads_with_norm_(params, self.stage.grad_clip, norm)
