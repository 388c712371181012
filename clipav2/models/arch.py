"""Architectures as plain data: what `create_model`, the FLOP count, `clipav2 models`, config
validation and the memory benchmark all read. No torch import here, so config checks stay cheap.

Defaults follow the JAX-trained CLIPA-v2 weights (spec section 1): tanh GELU, LayerNorm eps 1e-6,
fixed 2-D sin-cos image position embedding. Checkpoints converted from open_clip use
`gelu="exact", ln_eps=1e-5, pos_embed="learned"`.
"""
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class VisionArch:
    image_size: int
    patch_size: int
    width: int
    depth: int
    mlp: int
    heads: int
    pos_embed: str = "sincos"  # "sincos" (fixed buffer, any grid) | "learned" (table, resampled)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextArch:
    context_length: int
    width: int
    depth: int
    mlp: int
    heads: int
    vocab_size: int = 32000


@dataclass(frozen=True)
class ClipArch:
    name: str
    embed_dim: int
    vision: VisionArch
    text: TextArch
    gelu: str = "tanh"  # "tanh" (JAX) | "exact" (open_clip)
    ln_eps: float = 1e-6  # 1e-6 (JAX) | 1e-5 (open_clip)
    attention: str = "sdpa"  # "sdpa" | "flash_attn" | "xformers"
    checkpointing: str = "none"  # "none" | "all" | "every_<k>" (every k-th block)
    init: str = "clipa_jax"  # random-init rule, see clipav2.models.init: "clipa_jax" | "clipa_jax_t5x"


def _clipa(name, embed, img, patch, vw, vd, vm, vh, tw, td, tm, th, ctx=32) -> ClipArch:
    return ClipArch(
        name=name,
        embed_dim=embed,
        vision=VisionArch(img, patch, vw, vd, vm, vh),
        text=TextArch(ctx, tw, td, tm, th),
    )


_BASE = [
    # name, embed, image size, patch, vision width/depth/mlp/heads, text width/depth/mlp/heads
    ("ViT-B-16-CLIPA", 512, 224, 16, 768, 12, 3072, 12, 512, 12, 2048, 8),
    ("ViT-L-14-CLIPA", 768, 224, 14, 1024, 24, 4096, 16, 768, 12, 3072, 12),
    ("ViT-L-16-CLIPA", 768, 224, 16, 1024, 24, 4096, 16, 768, 12, 3072, 12),  # CLIPA v1 runs
    ("ViT-H-14-CLIPA", 1024, 224, 14, 1280, 32, 5120, 16, 1024, 24, 4096, 16),
    ("ViT-bigG-14-CLIPA", 1280, 224, 14, 1664, 48, 8192, 16, 1280, 32, 5120, 20),
]

ARCHITECTURES: dict[str, ClipArch] = {}
for row in _BASE:
    arch = _clipa(*row)
    if arch.name == "ViT-bigG-14-CLIPA":  # trained with main_t5x.py on clipa_jax/models_t5x/
        arch = replace(arch, init="clipa_jax_t5x")
    ARCHITECTURES[arch.name] = arch
    big = replace(arch, name=arch.name + "-336", vision=replace(arch.vision, image_size=336))
    ARCHITECTURES[big.name] = big

# Tiny models for tests and the CPU demo (vocabulary kept at 32,000 so the real tokenizer fits).
ARCHITECTURES["tiny"] = _clipa("tiny", 32, 32, 8, 32, 2, 64, 2, 32, 2, 64, 2, ctx=16)
ARCHITECTURES["demo"] = _clipa("demo", 128, 64, 8, 128, 4, 512, 4, 128, 4, 512, 4, ctx=32)


def get_arch(name: str, **overrides) -> ClipArch:
    """The named architecture, with top-level fields or `image_size` / `context_length` /
    `pos_embed` overridden. Unknown names and keys are errors that list what exists."""
    if name not in ARCHITECTURES:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    vision_keys = {"image_size", "pos_embed"}
    text_keys = {"context_length"}
    top = {k: v for k, v in overrides.items() if k not in vision_keys | text_keys}
    unknown = set(top) - set(ClipArch.__dataclass_fields__) - {"name"}
    if unknown:
        raise KeyError(f"unknown model option(s) {sorted(unknown)} for {name!r}")
    vis = {k: v for k, v in overrides.items() if k in vision_keys}
    txt = {k: v for k, v in overrides.items() if k in text_keys}
    arch = replace(arch, vision=replace(arch.vision, **vis), text=replace(arch.text, **txt), **top)
    if arch.vision.image_size % arch.vision.patch_size:
        raise ValueError(
            f"image size {arch.vision.image_size} is not a multiple of the patch size "
            f"{arch.vision.patch_size} of {name!r}"
        )
    return arch
