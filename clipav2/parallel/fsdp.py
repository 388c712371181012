"""`fsdp`: FSDP2 `fully_shard` on every block, each tower and the root (`apply.apply_fsdp`), so
each rank holds 1/world of the parameters, gradients and AdamW state (about half of DDP's bytes
at 2 ranks).

- Precision: `bf16_params` gathers the towers' parameters in bf16 (`param_dtype`; half the
  all-gather bytes, a bf16 residual stream); `bf16_autocast` gathers fp32 and runs the forward
  under torch.autocast. Gradients are reduced in fp32 and the sharded master weights stay fp32.
- HSDP: `parallel.hsdp_shard_size` = GPUs per shard group (e.g. 8 per node) gives a 2-D mesh
  (replicate x shard).
- Checkpoints: torch.distributed.checkpoint, resharded on load, so a run may resume on another
  world size.
"""
from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh

from clipav2.parallel.apply import apply_fsdp
from clipav2.parallel.native import SingleEngine


class FSDPEngine(SingleEngine):
    name = "fsdp"

    def _mesh(self):
        world, shard = self.world.world_size, self.parallel.hsdp_shard_size
        device_type = self.world.device.type
        if shard is None or shard >= world:
            return init_device_mesh(device_type, (world,))
        if world % shard:
            raise ValueError(f"parallel.hsdp_shard_size: {shard} does not divide the world size {world}")
        return init_device_mesh(device_type, (world // shard, shard), mesh_dim_names=("replicate", "shard"))

    def wrap(self, model, make_optimizer, shape):
        model = model.to(self.world.device)
        param_dtype = torch.bfloat16 if self.precision == "bf16_params" else None
        self.module = self.wrapped = self.model = apply_fsdp(model, self._mesh(), param_dtype, self.parallel.reshard_after_forward)
        return make_optimizer(self.module, self.parallel.fused_optimizer)  # over the shards

    def backward(self, loss, last):
        self.model.set_requires_gradient_sync(last)
        loss.backward()

    def grad_norm(self):
        # every gradient is a shard (DTensor): the local norms' global reduction is one collective
        return torch.nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None]).full_tensor()
