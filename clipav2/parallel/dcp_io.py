"""Sharded, resharding checkpoints with torch.distributed.checkpoint (DCP) for the single, ddp
and fsdp strategies: each rank writes its own shards, and a checkpoint loads on any world size.

DCP keeps two pickles, and neither is read with a plain unpickler here:
- its index (`.metadata`): `SafeFileSystemReader` admits an exact set of (module, name) pairs,
  DCP's own metadata classes, torch's dtypes and a few plain types; dotted names (which pickle
  would resolve attribute by attribute) are refused, and every shard it names must be a plain
  file name inside the checkpoint directory.
- the non-tensor items (optimizer hyper-parameters): torch's own `DefaultLoadPlanner.load_bytes`
  uses `torch.load(weights_only=False)`; `SafeLoadPlanner` loads them `weights_only=True` and
  accepts only plain data (numbers, strings, None, lists/tuples/dicts of them).
"""
from __future__ import annotations

import io
import pickle

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from clipav2 import compat
from clipav2.safe_load import UnsafeCheckpoint, check_tree, one_line

MAX_BYTE_ITEM = 16 << 20  # a non-tensor item is a number or a short list (optimizer hyper-parameters)

_DCP = "torch.distributed.checkpoint."
_TORCH_CONSTANTS = {  # dtypes, layouts, memory formats: values, not callables
    n for n in dir(torch) if isinstance(getattr(torch, n), (torch.dtype, torch.layout, torch.memory_format))
}
SAFE_GLOBALS = frozenset({
    (_DCP + "metadata", "Metadata"),
    (_DCP + "metadata", "MetadataIndex"),
    (_DCP + "metadata", "StorageMeta"),
    (_DCP + "metadata", "TensorProperties"),
    (_DCP + "metadata", "TensorStorageMetadata"),
    (_DCP + "metadata", "BytesStorageMetadata"),
    (_DCP + "metadata", "ChunkStorageMetadata"),
    (_DCP + "metadata", "_MEM_FORMAT_ENCODING"),
    (_DCP + "filesystem", "_StorageInfo"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # maps a layout's name to torch.strided etc.
    ("pathlib", "PosixPath"),  # the checkpoint id DCP records
    ("pathlib._local", "PosixPath"),  # its home from Python 3.13
} | {("torch", n) for n in _TORCH_CONSTANTS})


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if "." not in name and (module, name) in SAFE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafeCheckpoint(f"checkpoint metadata refers to {module}:{name}, which is not allowed")


class SafeFileSystemReader(dcp.FileSystemReader):
    """Reads and checks the index once (`load_dcp` calls it before DCP does, so a refusal is our
    one error, not DCP's logged fallbacks); DCP's own calls get the checked copy."""

    _checked = None

    def read_metadata(self, *args, **kwargs):
        if self._checked is None:
            self._checked = self._read_checked()
        self._checked.storage_meta.load_id = self.load_id
        return self._checked

    def _read_checked(self):
        path = compat.dcp_metadata_path(self)
        with self.fs.create_stream(path, "rb") as f:
            data = f.read()
        try:
            metadata = _MetadataUnpickler(io.BytesIO(data)).load()
        except UnsafeCheckpoint:
            raise
        except Exception as e:  # a malformed pickle: refused like a dangerous one
            raise UnsafeCheckpoint(f"{path} is not a DCP index ({type(e).__name__}: {e})") from None
        check_tree(metadata, len(data), f"the DCP index {path}")
        if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict) \
                or not isinstance(getattr(metadata, "storage_data", None), dict):
            raise UnsafeCheckpoint(f"{path} is a {type(metadata).__name__} of the wrong shape, not a DCP index")
        for info in metadata.storage_data.values():
            name = getattr(info, "relative_path", None)
            if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
                raise UnsafeCheckpoint(f"checkpoint metadata names the shard {name!r}, which is not a file in {self.path}")
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        return metadata


def _plain(value) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's planner with its non-tensor items read `weights_only=True`, plain data only."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        size = value.getbuffer().nbytes if isinstance(value, io.BytesIO) else None
        if size is not None and size > MAX_BYTE_ITEM:
            raise UnsafeCheckpoint(f"checkpoint item {fqn} is {size} bytes, over the {MAX_BYTE_ITEM}-byte limit")
        try:
            loaded = torch.load(value, weights_only=True)
        except Exception as e:
            raise UnsafeCheckpoint(f"checkpoint item {fqn} is not plain data ({one_line(e)})") from None
        check_tree(loaded, size or MAX_BYTE_ITEM, f"checkpoint item {fqn}")
        if not _plain(loaded):
            raise UnsafeCheckpoint(f"checkpoint item {fqn} is a {type(loaded).__name__}, not plain data")
        compat.dcp_store_item(self, fqn, loaded)


def save_dcp(model, optimizer, path) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=dcp.FileSystemWriter(str(path)))


def checked_reader(path) -> SafeFileSystemReader:
    """A reader of the DCP checkpoint at `path` whose index has been read and admitted: a
    tampered index is refused here, before DCP touches anything."""
    reader = SafeFileSystemReader(str(path))
    reader.read_metadata()
    return reader


def load_dcp(model, optimizer, path) -> None:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, storage_reader=checked_reader(path), planner=SafeLoadPlanner())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_model_state(model, keys) -> dict:
    """Consolidated fp32 weights on the CPU, complete on rank 0 (empty elsewhere), restricted to
    `keys` (the plain module's state_dict: DCP also returns non-persistent buffers)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in sd.items() if k in keys}
