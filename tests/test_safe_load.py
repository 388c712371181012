"""The checkpoint readers' allow-lists, piece by piece (the end-to-end attacks are in
test_checkpoint_attacks.py)."""
import io
import os
import pickle

import pytest
import torch

from clipav2.parallel.dcp_io import SAFE_GLOBALS, _MetadataUnpickler
from clipav2.safe_load import UnsafeCheckpoint, one_line, weights_only_loads


def _global(module, name) -> bytes:
    def s(text):
        b = text.encode()
        return b"\x8c" + bytes([len(b)]) + b
    return b"\x80\x04" + s(module) + s(name) + b"\x93."


@pytest.mark.parametrize("module,name", [
    ("torch.distributed.checkpoint.filesystem", "os.system"),  # dotted: resolved attribute by attribute
    ("torch.distributed.checkpoint.metadata", "Metadata.__init__"),
    ("torch.distributed.checkpoint.filesystem", "FileSystemReader"),  # DCP's, but not metadata
    ("torch", "load"),
    ("builtins", "eval"),
    ("os", "system"),
])
def test_metadata_unpickler_refuses_everything_off_the_list(module, name):
    with pytest.raises(UnsafeCheckpoint, match="not allowed"):
        _MetadataUnpickler(io.BytesIO(_global(module, name))).load()


def test_metadata_unpickler_admits_exactly_its_list():
    for module, name in SAFE_GLOBALS:
        if module.startswith("pathlib._local"):
            continue  # Python 3.13's home of PosixPath
        assert _MetadataUnpickler(io.BytesIO(_global(module, name))).load() is not None
    assert all("." not in name for _, name in SAFE_GLOBALS)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_weights_only_loads_overrides_a_library_passing_weights_only_false(tmp_path):
    """DeepSpeed's readers (checkpoint/universal_checkpoint.py, zero_checkpoint.py, ...) call
    torch.load(weights_only=False); inside `weights_only_loads` that is refused."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    with weights_only_loads(), pytest.raises(pickle.UnpicklingError) as e:
        torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert not marker.exists()
    assert "posix.system" in one_line(e.value) and "\n" not in one_line(e.value)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored after
    buf2 = io.BytesIO()
    torch.save({"w": torch.ones(2), "lr": 0.1}, buf2)
    with weights_only_loads():
        assert torch.load(io.BytesIO(buf2.getvalue()), weights_only=False)["lr"] == 0.1  # plain data loads


@pytest.mark.parametrize("shard", ["../outside.distcp", "/etc/passwd", "sub/x.distcp", ".."])
def test_metadata_naming_a_file_outside_the_checkpoint_is_refused(tmp_path, shard):
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, MetadataIndex

    from clipav2.parallel.dcp_io import SafeFileSystemReader

    md = Metadata(state_dict_metadata={"x": BytesStorageMetadata()},
                  storage_data={MetadataIndex("x"): _StorageInfo(shard, 0, 1)})
    (tmp_path / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(UnsafeCheckpoint, match="not a file in"):
        SafeFileSystemReader(str(tmp_path)).read_metadata()
