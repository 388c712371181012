"""`deepspeed`: ZeRO stage 1 (optimizer state sharded), 2 (+ gradients) or 3 (+ parameters).

The DeepSpeed config is generated from ours (batch sizes, accumulation, ZeRO stage, bf16,
clipping) and a user's JSON (`parallel.deepspeed_config`) is merged over it. Our torch AdamW is
handed to `deepspeed.initialize`, which avoids compiling `fused_adam` (and lets the bf16-momentum
AdamW run under ZeRO). DeepSpeed skips the update itself when the gradient norm is non-finite
(fp32, and bf16 with `check_grad_overflow`); we read that back with `was_step_applied()`. That
check is a host read inside DeepSpeed's `engine.step()`: unlike single/ddp/fsdp, a DeepSpeed step
synchronises the host once (its engine offers no device-side skip).

Checkpoints are DeepSpeed's own format (`save_checkpoint`), read back through a checkpoint engine
that uses `torch.load(weights_only=True)` with an allow-list of DeepSpeed's few classes. They
resume on the same world size; for another world size convert them with DeepSpeed's universal
checkpoint tool (`python -m deepspeed.checkpoint.ds_to_universal`) and set
`{"checkpoint": {"load_universal": true}}` in `parallel.deepspeed_config` (see docs/engine.md).
"""
from __future__ import annotations

import json
import math

import torch

from clipav2 import compat
from clipav2.parallel.base import Engine

TAG = "zero"
ZERO_STAGES = (1, 2, 3)  # parallel.zero_stage


def merge(ours: dict, theirs: dict) -> dict:
    """Recursive dict merge, `theirs` wins."""
    out = dict(ours)
    for k, v in theirs.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deepspeed_config(parallel, shape, precision: str) -> dict:
    """Ours for the step's `shape` (`parallel.base.StepShape`), with the user's JSON
    (`parallel.deepspeed_config`) merged over it."""
    ours = {
        "train_batch_size": shape.global_batch,
        "train_micro_batch_size_per_gpu": shape.micro_batch,
        "gradient_accumulation_steps": shape.grad_accum,
        "gradient_clipping": shape.grad_clip or 0.0,
        "zero_optimization": {"stage": parallel.zero_stage},
        "bf16": {"enabled": precision == "bf16_params", "check_grad_overflow": True},
        "zero_allow_untested_optimizer": True,  # our torch AdamW
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if parallel.deepspeed_config:  # a JSON object: checked with the config (read_deepspeed_json)
        with open(parallel.deepspeed_config) as f:
            ours = merge(ours, json.load(f))
    return ours


def safe_load(path, map_location=None, mmap: bool = False):
    """torch.load with weights_only=True, admitting DeepSpeed's few checkpoint classes."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)


def _safe_checkpoint_engine(engine_cls):
    """DeepSpeed's torch checkpoint engine, loading with weights_only=True."""

    class SafeEngine(engine_cls):
        def load(self, path, map_location=None):
            return safe_load(path, map_location=map_location)

    return SafeEngine


class DeepSpeedEngine(Engine):
    """The one engine that owns backward and the optimizer step. `bf16_params` is DeepSpeed's
    bf16 mode (the module is cast to bf16, fp32 master weights in the optimizer, the temperature
    included); `bf16_autocast` keeps DeepSpeed in fp32 and runs the forward under torch.autocast."""

    name = "deepspeed"
    owns_update = True

    def wrap(self, model, make_optimizer, shape):
        import deepspeed

        model = model.to(self.world.device)
        optimizer = make_optimizer(model, False)
        config = deepspeed_config(self.parallel, shape, self.precision)
        self.ds_config = config
        engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, dist_init_required=False)
        compat.swap_checkpoint_engine(engine, _safe_checkpoint_engine)
        self.model, self.module = engine, engine.module
        return optimizer  # DeepSpeed's, wrapping ours: the LR is set on its groups

    def backward(self, loss, last):
        self.model.backward(loss, scale_wrt_gas=False)  # the step has scaled the loss already
        if not last:
            self.model.step()  # a no-op before the accumulation boundary, as DeepSpeed expects

    def step(self, lr, optimizer):
        """DeepSpeed's engine checks the gradients for overflow on the host inside `step()` (it
        decides there whether to call the optimizer), so this engine syncs once per step
        whatever we do; we read its verdict back as host values."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.model.step()
        norm = self.model.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        skipped = not (self.model.was_step_applied() and math.isfinite(norm))
        return norm, skipped

    def save(self, path, optimizer):
        self.model.save_checkpoint(str(path / "deepspeed"), tag=TAG, save_latest=False)

    def load(self, path, optimizer):
        load_path, _ = self.model.load_checkpoint(
            str(path / "deepspeed"), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if load_path is None:
            raise FileNotFoundError(f"deepspeed: no checkpoint under {path / 'deepspeed'}")

    def check_files(self, directory):
        """Every file DeepSpeed's load will unpickle, split over the ranks, read as the load reads
        it (mmap: the tensors' bytes are not read): a refused file is found before the load's
        collectives, so no rank is left waiting in one."""
        from pathlib import Path

        files = sorted(p for p in (Path(directory) / "deepspeed").rglob("*.pt"))
        for path in files[self.world.rank :: self.world.world_size]:
            safe_load(path, map_location="cpu", mmap=True)

    def full_state_dict(self):
        """fp32 master weights gathered from the ZeRO partitions (a collective), kept on rank 0."""
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.model.module.named_parameters():
            full = safe_get_full_fp32_param(p)
            if self.world.is_main:
                out[name] = full.detach().float().cpu().clone()
        if self.world.is_main:  # persistent buffers, as the plain module's state_dict has them
            for name, t in self.model.module.state_dict().items():
                if name not in out:
                    out[name] = t.detach().cpu().clone()
        return out
