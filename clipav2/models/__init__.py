"""CLIPA-v2 models: `create_model(name, **overrides)`, the `CLIP` module, the architecture table,
FLOP and parameter counts (`flops`), open_clip interchange (`convert`). Attributes load lazily, so
the torch-free modules (`arch`, `flops`, `weights_file`) are read without importing torch."""
from clipav2.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "clipav2.models.arch": ["ARCHITECTURES", "ClipArch", "get_arch"],
    "clipav2.models.clip": ["CLIP", "create_model"],
})
