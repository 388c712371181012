"""Analytic FLOP count per sample (shared by metrics, MFU and cost; docs/cost.md)
and parameter counts built on the meta device (no weights allocated).

Per block: 2*T*(4*d^2 + 2*d*m) matmul FLOPs plus 4*T^2*d for the attention scores and their
product with the values; patch embedding 2*n*(3*p^2)*d over all n patches (kept tokens are selected
after it); the two bias-free heads 2*d*embed each. Counting the class token (the model does compute
it) reproduces open_clip's model_profile.csv: 167.50 / 354.02 / 1007.93 GFLOPs for L / H / bigG at
224 px. The training figures usually quoted (H/14 @84 T8 = 151 GFLOPs, ...) leave it out:
`class_token=False`. LayerNorm, GELU, softmax and embedding look-ups are not counted (< 0.1%).
"""
import functools

from clipav2.models.arch import ClipArch, get_arch


def _arch(arch) -> ClipArch:
    return get_arch(arch) if isinstance(arch, str) else arch


def _blocks(depth: int, tokens: int, width: int, mlp: int) -> int:
    return depth * (2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width)


def image_flops(arch, image_size=None, kept_image_tokens=None, class_token=True) -> int:
    a = _arch(arch)
    v = a.vision
    size = v.image_size if image_size is None else image_size
    if size % v.patch_size:
        raise ValueError(f"image size {size} is not a multiple of the patch size {v.patch_size} of {a.name!r}")
    n = (size // v.patch_size) ** 2
    kept = n if kept_image_tokens is None else kept_image_tokens
    if not 0 < kept <= n:
        raise ValueError(f"kept_image_tokens must be in [1, {n}] at {size} px, got {kept}")
    patch = 2 * n * 3 * v.patch_size**2 * v.width
    return patch + _blocks(v.depth, kept + int(class_token), v.width, v.mlp) + 2 * v.width * a.embed_dim


def text_flops(arch, text_len=None) -> int:
    a = _arch(arch)
    t = a.text
    length = t.context_length if text_len is None else text_len
    if length < 1:
        raise ValueError(f"text_len must be >= 1, got {length}")
    return _blocks(t.depth, length, t.width, t.mlp) + 2 * t.width * a.embed_dim


def forward_flops(arch, image_size=None, kept_image_tokens=None, text_len=None, class_token=True) -> int:
    """Forward FLOPs of one (image, text) pair. `arch` is a ClipArch or a name; defaults are the
    architecture's own image size, all patches kept, and its context length."""
    return image_flops(arch, image_size, kept_image_tokens, class_token) + text_flops(arch, text_len)


def train_flops(*args, **kwargs) -> int:
    """Forward + backward = 3x forward; checkpointing's recomputation is not counted (MFU convention)."""
    return 3 * forward_flops(*args, **kwargs)


def _recomputed(depth: int, tokens: int, width: int, mlp: int, checkpointing: str) -> int:
    """A checkpointed block's recomputation in the backward pass: its forward up to fc2's input.
    Non-reentrant torch.utils.checkpoint stops recomputing once it has every tensor the backward
    needs, and no backward needs fc2's output (the residual add passes the gradient through), so
    qkv, attention, proj and fc1 run again and fc2 does not."""
    from clipav2.parallel.apply import checkpoint_flags

    per_block = 2 * tokens * (4 * width * width + width * mlp) + 4 * tokens * tokens * width
    return sum(checkpoint_flags(checkpointing, depth)) * per_block


def recompute_flops(arch, checkpointing: str, image_size=None, kept_image_tokens=None, text_len=None,
                    class_token=True) -> int:
    """FLOPs activation checkpointing (`model.checkpointing`) adds to one sample's training step.
    With every block checkpointed and mlp = 4 x width this is 2/9 of `train_flops` (+22%, less
    attention's share), not the 1/3 a whole extra forward would be."""
    a = _arch(arch)
    v, t = a.vision, a.text
    n = ((v.image_size if image_size is None else image_size) // v.patch_size) ** 2
    kept = n if kept_image_tokens is None else kept_image_tokens
    length = t.context_length if text_len is None else text_len
    return (_recomputed(v.depth, kept + int(class_token), v.width, v.mlp, checkpointing)
            + _recomputed(t.depth, length, t.width, t.mlp, checkpointing))


def count_params(arch) -> dict:
    """Trainable parameters {"total", "image", "text"} of the model built for `arch` on the meta
    device. "total" adds the temperature. With pos_embed="sincos" the image position table is a
    fixed buffer and not counted; open_clip stores it as a parameter, so compare open_clip's
    numbers with `get_arch(name, pos_embed="learned")`."""
    return dict(_count_params(_arch(arch)))


@functools.lru_cache(maxsize=64)
def _count_params(arch) -> tuple:
    """Built once per architecture: `micro_batch.choose` asks for every candidate size."""
    import torch

    from clipav2.models.clip import CLIP

    with torch.device("meta"):
        model = CLIP(arch)

    def n(module):
        return sum(p.numel() for p in module.parameters())

    return (("total", n(model)), ("image", n(model.visual)), ("text", n(model.text)))
