"""Input pipeline: webdataset shards -> per-stage transforms -> uint8 micro-batches (see
docs/data.md). Attributes load lazily, so `clipav2 data demo` and `expand_urls` (called by
config checks) do not import torch."""
from clipav2.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "clipav2.data.loader": ["TrainLoader", "build_train_loader"],
    "clipav2.data.shards": ["expand_urls"],
    "clipav2.data.transforms": ["EvalTransform", "TrainTransform", "normalize"],
})
