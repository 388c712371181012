"""`single` (one process) and `ddp` (DistributedDataParallel: a full replica per rank, averaged
gradients). Both keep fp32 master weights and checkpoint with torch.distributed.checkpoint, so a
ddp checkpoint also resumes on another world size. Precision: `bf16_autocast` runs the forward
under torch.autocast; `bf16_params` casts the towers' parameters to bf16 for the forward
(`apply.bf16_tower_forward`), as FSDP2's `param_dtype` does.
"""
from __future__ import annotations

import contextlib

from clipav2.parallel.apply import apply_ddp, bf16_tower_forward
from clipav2.parallel.base import Engine
from clipav2.parallel.dcp_io import full_model_state, load_dcp, save_dcp


class SingleEngine(Engine):
    name = "single"

    def wrap(self, model, make_optimizer, shape):
        self.module = model.to(self.world.device)
        self.wrapped = self._distribute(self.module)
        self.model = bf16_tower_forward(self.wrapped) if self.precision == "bf16_params" else self.wrapped
        # fused AdamW (CUDA and CPU) honours a device-side `found_inf`: no host sync to skip a step
        return make_optimizer(self.module, self.parallel.fused_optimizer)

    def _distribute(self, model):
        return model

    def save(self, path, optimizer):
        save_dcp(self.wrapped, optimizer, path / "state")

    def load(self, path, optimizer):
        load_dcp(self.wrapped, optimizer, path / "state")

    def full_state_dict(self):
        return full_model_state(self.wrapped, set(self.module.state_dict()))


class DDPEngine(SingleEngine):
    name = "ddp"

    def _distribute(self, model):
        return apply_ddp(model, self.world.device)

    def no_sync(self, last):
        return contextlib.nullcontext() if last else self.wrapped.no_sync()
