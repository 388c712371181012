"""`single` (one process) and `ddp` (DistributedDataParallel: a full replica per rank, averaged
gradients). Both train fp32 master weights under bf16 autocast on the GPU and checkpoint with
torch.distributed.checkpoint, so a ddp checkpoint also resumes on another world size.
"""
from __future__ import annotations

import contextlib

import torch
from torch.nn.parallel import DistributedDataParallel

from clipav2.parallel.base import Strategy
from clipav2.parallel.dcp_io import full_model_state, load_dcp, save_dcp
from clipav2.train.optim import build_optimizer, skip_step_on_device


class SingleStrategy(Strategy):
    name = "single"

    def _wrap(self, model):
        model = model.to(self.world.device)
        self.module = model
        self.model = self._distribute(model)
        # fused AdamW (CUDA and CPU) honours a device-side `found_inf`: no host sync to skip a step
        self.optimizer = build_optimizer(model, self.stage, self.cfg.parallel.bf16_momentum, fused=self.cfg.parallel.fused_optimizer)

    def _distribute(self, model):
        return model

    def _no_sync(self):
        return contextlib.nullcontext()

    def forward_backward(self, loss_fn, micro_index, n_micro):
        with self.autocast():
            return super().forward_backward(loss_fn, micro_index, n_micro)

    def _backward(self, loss, micro_index, n_micro):
        last = micro_index == n_micro - 1
        with contextlib.nullcontext() if last else self._no_sync():
            (loss / n_micro).backward()

    def _grads(self):
        return [p.grad for p in self.module.parameters() if p.grad is not None]

    def _grad_norm(self) -> torch.Tensor:
        return torch.nn.utils.get_total_norm(self._grads())

    def _clip(self, norm):
        torch.nn.utils.clip_grads_with_norm_(self.module.parameters(), self.stage.grad_clip, norm)

    def _apply_step(self, lr, loss):
        norm = self._grad_norm()
        skipped = ~(torch.isfinite(norm) & torch.isfinite(loss))
        if self.stage.grad_clip is not None:
            self._clip(norm)  # on the device; a non-finite norm only spoils grads that are dropped
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        skip_step_on_device(self.optimizer, skipped)
        self.optimizer.zero_grad(set_to_none=True)
        return norm.detach(), skipped

    def _save_state(self, path):
        save_dcp(self.model, self.optimizer, path / "state")

    def _load_state(self, path):
        load_dcp(self.model, self.optimizer, path / "state")

    def full_state_dict(self):
        return full_model_state(self.model, set(self.module.state_dict()))


class DDPStrategy(SingleStrategy):
    name = "ddp"

    def _distribute(self, model):
        cuda = self.world.device.type == "cuda"
        return DistributedDataParallel(model, device_ids=[self.world.device.index] if cuda else None)

    def _no_sync(self):
        return self.model.no_sync()
