"""Architectures as plain data: what `create_model`, the FLOP count, `clipav2 models`, config
validation and the memory benchmark all read. No torch import here.

The table is written with open_clip's model-config field names (`embed_dim`, `vision_cfg`,
`text_cfg`, `layers`, `width`, `head_width`, `mlp_ratio`, `heads`, `pool_type`, ...): adding a
model is adding a row, numbers copied from its JSON file.

CLIPA-v2 rows follow the JAX-trained weights: tanh GELU, LayerNorm eps 1e-6, fixed 2-D sin-cos
image positions, no LayerNorm before the blocks, average pool over the patch tokens, a
bidirectional text tower read at its last position. Checkpoints converted from open_clip use
`gelu="exact", ln_eps=1e-5, pos_embed="learned"`. CLIPA v1 rows (clipa_torch, an open_clip fork)
keep open_clip's numerics and its causal BPE text tower.
"""
from dataclasses import dataclass, replace

# model.attention choices (clipav2.models.attention implements them; kept here, free of torch,
# so the config validates against the same list)
ATTENTION_BACKENDS = ("sdpa", "sdpa_flash", "sdpa_cudnn", "flash_attn", "xformers")

POS_EMBEDS = ("sincos", "learned", "sincos_open_clip")
GELUS = ("tanh", "exact")  # JAX's tanh approximation | open_clip's exact erf
IMAGE_POOLS = ("avg", "tok", "avg_with_cls")
TEXT_POOLS = ("last", "argmax")


@dataclass(frozen=True)
class VisionArch:
    image_size: int
    patch_size: int
    width: int
    depth: int
    mlp: int
    heads: int
    # "sincos": JAX posemb_sincos_2d, fixed | "learned": a table, resampled on size changes |
    # "sincos_open_clip": open_clip / MAE get_2d_sincos_pos_embed, fixed (CLIPA v1 pre-training)
    pos_embed: str = "sincos"
    pool: str = "avg"  # "avg" (patch tokens) | "tok" (class token) | "avg_with_cls" (clipa_torch GAP)
    ln_pre: bool = False  # LayerNorm after the position embedding (open_clip's ln_pre)

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
    pool: str = "last"  # "last" position (CLIPA-v2) | "argmax" token id, the end-of-text (CLIP BPE)
    causal: bool = False  # causal attention mask (CLIP); CLIPA-v2 masks nothing


@dataclass(frozen=True)
class ClipArch:
    name: str
    embed_dim: int
    vision: VisionArch
    text: TextArch
    gelu: str = "tanh"  # "tanh" (JAX) | "exact" (open_clip)
    ln_eps: float = 1e-6  # 1e-6 (JAX) | 1e-5 (open_clip)
    attention: str = "sdpa"  # a backend of clipav2.models.attention
    # random-init rule, see clipav2.models.init: "clipa_jax" | "clipa_jax_t5x" | "open_clip"
    init: str = "clipa_jax"
    logit_scale_max: float | None = None  # open_clip's train loop clamps the scale at 100


def from_open_clip_config(name: str, cfg: dict, **ours) -> ClipArch:
    """A `ClipArch` from open_clip model-config fields; `ours` sets the remaining ClipArch fields."""
    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    vw, tw = v["width"], t["width"]
    vision = VisionArch(
        image_size=v["image_size"], patch_size=v["patch_size"], width=vw, depth=v["layers"],
        mlp=round(vw * v.get("mlp_ratio", 4.0)), heads=vw // v.get("head_width", 64),
        pos_embed=v.get("pos_embed", "sincos"),
        pool=v.get("pool_type", "tok"), ln_pre=not v.get("no_ln_pre", False),
    )
    text = TextArch(
        context_length=t["context_length"], width=tw, depth=t["layers"],
        mlp=round(tw * t.get("mlp_ratio", 4.0)), heads=t["heads"], vocab_size=t["vocab_size"],
        pool=t.get("pool_type", "argmax"), causal=not t.get("no_causal_mask", False),
    )
    return ClipArch(name=name, embed_dim=cfg["embed_dim"], vision=vision, text=text, **ours)


def _v2(embed_dim, image, text, **ours) -> dict:
    """A CLIPA-v2 row: no ln_pre, patch-average pool, bidirectional text read at the last position,
    32,000-entry WordPiece vocabulary, context 32."""
    vision_cfg = {"image_size": 224, "no_ln_pre": True, "pool_type": "avg", **image}
    text_cfg = {"context_length": 32, "vocab_size": 32000, "pool_type": "last", "no_causal_mask": True, **text}
    return {"cfg": {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}, "ours": ours}


def _v1(embed_dim, image, text) -> dict:
    """A CLIPA v1 row (clipa_torch/open_clip/model_configs): open_clip's ViT (ln_pre, exact GELU,
    eps 1e-5) with its causal 49,408-entry BPE text tower; pre-trains on fixed sin-cos positions."""
    vision_cfg = {"image_size": 224, "pos_embed": "sincos_open_clip", **image}
    text_cfg = {"vocab_size": 49408, "pool_type": "argmax", **text}
    ours = {"gelu": "exact", "ln_eps": 1e-5, "init": "open_clip", "logit_scale_max": 100.0}
    return {"cfg": {"embed_dim": embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}, "ours": ours}


_L16_V1_IMAGE = {"layers": 24, "width": 1024, "patch_size": 16, "pool_type": "avg_with_cls"}
_L16_V1_TEXT = {"width": 768, "heads": 12, "layers": 12}

_ROWS = {
    # CLIPA-v2 (open_clip's ViT-*-CLIPA.json numbers); every one also gets a "-336" variant
    "ViT-B-16-CLIPA": _v2(512, {"layers": 12, "width": 768, "patch_size": 16},
                          {"width": 512, "heads": 8, "layers": 12}),
    "ViT-L-14-CLIPA": _v2(768, {"layers": 24, "width": 1024, "patch_size": 14},
                          {"width": 768, "heads": 12, "layers": 12}),
    "ViT-L-16-CLIPA": _v2(768, {"layers": 24, "width": 1024, "patch_size": 16},
                          {"width": 768, "heads": 12, "layers": 12}),
    "ViT-H-14-CLIPA": _v2(1024, {"layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
                          {"width": 1024, "heads": 16, "layers": 24}),
    # trained with clipa_jax/main_t5x.py on clipa_jax/models_t5x/
    "ViT-bigG-14-CLIPA": _v2(1280, {"layers": 48, "width": 1664, "head_width": 104, "mlp_ratio": 4.9231,
                                    "patch_size": 14},
                             {"width": 1280, "heads": 20, "layers": 32}, init="clipa_jax_t5x"),
}
_V1_ROWS = {
    # CLIPA v1 under clipa_torch's model names (clipa_torch/open_clip/model_configs/*.json);
    # "-Syntax" names only pick clipa_torch's tokenizer, the weights are the same.
    "ViT-B-16-CL16": _v1(512, {"layers": 12, "width": 768, "patch_size": 16, "pool_type": "tok"},
                         {"context_length": 16, "width": 512, "heads": 8, "layers": 12}),
    "ViT-L-16-CL16-GAP": _v1(768, _L16_V1_IMAGE, {"context_length": 16, **_L16_V1_TEXT}),
    "ViT-L-16-CL16-Syntax-GAP": _v1(768, _L16_V1_IMAGE, {"context_length": 16, **_L16_V1_TEXT}),
    "ViT-L-16-CL8-Syntax-GAP": _v1(768, _L16_V1_IMAGE, {"context_length": 8, **_L16_V1_TEXT}),
    "ViT-L-16-CL32-GAP": _v1(768, _L16_V1_IMAGE, {"context_length": 32, **_L16_V1_TEXT}),
}
# Tiny models for tests and the CPU demo (vocabulary kept at 32,000 so the real tokenizer fits).
_SMALL = {
    "tiny": _v2(32, {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2},
                {"context_length": 16, "width": 32, "heads": 2, "layers": 2, "mlp_ratio": 2}),
    "demo": _v2(128, {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
                {"context_length": 32, "width": 128, "heads": 4, "layers": 4}),
}

ARCHITECTURES: dict[str, ClipArch] = {}
for _name, _row in {**_ROWS, **_V1_ROWS, **_SMALL}.items():
    _arch = from_open_clip_config(_name, _row["cfg"], **_row["ours"])
    ARCHITECTURES[_name] = _arch
    if _name in _ROWS:
        _big = replace(_arch, name=_name + "-336", vision=replace(_arch.vision, image_size=336))
        ARCHITECTURES[_big.name] = _big


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
