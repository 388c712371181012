"""`forbid_host_sync()`: make any read of a tensor's value by the host raise inside a block, to
check that a training step only enqueues device work (docs/engine.md).

On CUDA, torch's own sync debug mode catches every implicit synchronisation. On any device, the
Python-level reads (`.item()`, `.tolist()`, `bool()`, `float()`, `int()`, `.numpy()`) raise, so
the same check runs on the CPU, where reading a value costs nothing but the code path is the one
a GPU run takes.
"""
from __future__ import annotations

import contextlib

import torch

READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


class HostSyncError(RuntimeError):
    pass


def _raiser(name):
    def read(self, *args, **kwargs):
        raise HostSyncError(f"Tensor.{name}() read a tensor on the host inside forbid_host_sync()")

    return read


@contextlib.contextmanager
def forbid_host_sync():
    saved = {name: torch.Tensor.__dict__.get(name) for name in READS}
    cuda = torch.cuda.is_available()
    mode = torch.cuda.get_sync_debug_mode() if cuda else None
    try:
        for name in READS:
            setattr(torch.Tensor, name, _raiser(name))
        if cuda:
            torch.cuda.set_sync_debug_mode("error")
        yield
    finally:
        for name, fn in saved.items():
            if fn is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, fn)
        if cuda:
            torch.cuda.set_sync_debug_mode(mode)
