"""Input pipeline: webdataset shards -> per-stage transforms -> uint8 micro-batches (see
docs/data.md). Heavy imports stay in the submodules; these are the entry points."""
from clipav2.data.loader import TrainLoader, build_train_loader
from clipav2.data.shards import expand_urls
from clipav2.data.transforms import EvalTransform, TrainTransform, normalize

__all__ = ["TrainLoader", "build_train_loader", "expand_urls", "EvalTransform", "TrainTransform", "normalize"]
