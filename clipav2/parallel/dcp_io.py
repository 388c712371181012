"""Sharded, resharding checkpoints with torch.distributed.checkpoint (DCP) for the single, ddp
and fsdp strategies: each rank writes its own shards, and a checkpoint loads on any world size.

DCP stores its index (`.metadata`) as a pickle; `SafeFileSystemReader` reads it with an
unpickler that only admits DCP's own metadata classes and plain containers, and DCP loads
non-tensor items with `torch.load(weights_only=True)`, so loading never runs arbitrary code.
"""
from __future__ import annotations

import io
import pickle

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

_SAFE_MODULE_PREFIXES = ("torch.distributed.checkpoint.",)
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to torch.strided etc.
    ("pathlib", "PosixPath"),  # the checkpoint id DCP records
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith(_SAFE_MODULE_PREFIXES) or (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"checkpoint metadata refers to {module}.{name}, which is not allowed")


class SafeFileSystemReader(dcp.FileSystemReader):
    def read_metadata(self, *args, **kwargs):
        rank = kwargs.get("rank")
        with self.fs.create_stream(self._get_metadata_path(rank), "rb") as f:
            metadata = _MetadataUnpickler(io.BytesIO(f.read())).load()
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def save_dcp(model, optimizer, path) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=dcp.FileSystemWriter(str(path)))


def load_dcp(model, optimizer, path) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=SafeFileSystemReader(str(path)))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_model_state(model, keys) -> dict:
    """Consolidated fp32 weights on the CPU, complete on rank 0 (empty elsewhere), restricted to
    `keys` (the plain module's state_dict: DCP also returns non-persistent buffers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in sd.items() if k in keys}
