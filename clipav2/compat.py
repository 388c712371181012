"""The six places where we rely on library internals, each in one function, so an upgrade that
changes one fails its test in tests/test_compat.py loudly instead of silently changing behaviour:

- torch's fused AdamW skips a step when `optimizer.found_inf` is non-zero (the attribute
  GradScaler sets; read in torch/optim/adam.py and adamw.py): our device-side skip.
- torch's private `torch._fused_adamw_` (the kernel behind `AdamW(fused=True)`): the update of
  our bf16-first-moment AdamW, on an fp32 copy of the moment.
- torch.distributed.checkpoint's `FileSystemReader._get_metadata_path()` (private, torch 2.9 on;
  before it `read_metadata` joins `.metadata` to the path inline): where the pickled index lives,
  which we read ourselves with an allow-list unpickler.
- torch.distributed.checkpoint's `DefaultLoadPlanner.load_bytes` stores a loaded non-tensor item
  into the caller's nested state dict with the private `_traverse.set_element` and the planner's
  `original_state_dict` / `mappings` (or, unflattened, into `state_dict`): we store our
  weights-only loaded items the same way.
- DeepSpeed's engine loads checkpoints through `engine.checkpoint_engine.load(path,
  map_location)` of a `TorchCheckpointEngine`; we swap that object's class for a subclass whose
  `load` is weights-only.
- torch's multi-process DataLoader iterator stops its workers in the private
  `_shutdown_workers()` (what its `__del__` calls): our loader's workers ignore SIGTERM, so they
  are stopped there when a run ends early, not left for multiprocessing's exit to terminate.
"""
from __future__ import annotations

import torch


def set_found_inf(optimizer: torch.optim.Optimizer, skipped: torch.Tensor) -> None:
    """Tell a fused (or our bf16-momentum) AdamW to skip its next step where `skipped` is set."""
    optimizer.found_inf = skipped.float()


def fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, beta1, beta2, eps, weight_decay, found_inf):
    """One fused AdamW update of the lists in place (torch's kernel; skipped where `found_inf`)."""
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, beta1=beta1, beta2=beta2,
                        maximize=False, grad_scale=None, found_inf=found_inf, lr=lr, eps=eps, weight_decay=weight_decay)


def dcp_metadata_path(reader):
    """The path of a DCP checkpoint's index file, as the reader resolves it."""
    resolve = getattr(reader, "_get_metadata_path", None)
    if resolve is None:  # torch < 2.9: read_metadata's own inline join
        return reader.fs.concat_path(reader.path, ".metadata")
    return resolve()


def dcp_store_item(planner, fqn: str, value) -> None:
    """Put a loaded non-tensor item where `DefaultLoadPlanner.load_bytes` would."""
    if planner.flatten_state_dict:
        from torch.distributed.checkpoint._traverse import set_element

        set_element(planner.original_state_dict, planner.mappings[fqn], value)
    else:
        planner.state_dict[fqn] = value


def swap_checkpoint_engine(engine, make_subclass) -> bool:
    """Replace the class of DeepSpeed's torch checkpoint engine with `make_subclass(cls)`.
    False when the engine uses another checkpoint engine (then it is left alone)."""
    current = type(engine.checkpoint_engine)
    if current.__name__ != "TorchCheckpointEngine":
        return False
    engine.checkpoint_engine.__class__ = make_subclass(current)
    return True


def stop_loader_workers(iterator) -> None:
    """Stop the worker processes of a DataLoader iterator now (a single-process one has none)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
