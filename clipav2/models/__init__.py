"""CLIPA-v2 models: `create_model(name, **overrides)`, the `CLIP` module, the architecture table,
FLOP and parameter counts (`flops`), open_clip interchange (`convert`)."""
from clipav2.models.arch import ARCHITECTURES, ClipArch, get_arch
from clipav2.models.clip import CLIP, create_model

__all__ = ["ARCHITECTURES", "CLIP", "ClipArch", "create_model", "get_arch"]
