"""Input pipeline: webdataset shards -> per-stage transforms -> uint8 micro-batches (see
docs/data.md). Attributes load lazily, so `clipav2 data demo` and `expand_urls` (called by
config checks) do not import torch."""
import importlib

_EXPORTS = {
    "TrainLoader": "clipav2.data.loader",
    "build_train_loader": "clipav2.data.loader",
    "expand_urls": "clipav2.data.shards",
    "EvalTransform": "clipav2.data.transforms",
    "TrainTransform": "clipav2.data.transforms",
    "normalize": "clipav2.data.transforms",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'clipav2.data' has no attribute {name!r}")
