"""open_clip interchange and our own checkpoint files.

Our layout is the plain `model.state_dict()`; open_clip's differs by names and by storing both
heads transposed. Reading never unpickles arbitrary objects (safetensors, or torch.load with
weights_only=True). Loading builds the model on the meta device and takes the given tensors over
(`load_state_dict(assign=True)`): nothing is allocated twice, and an in-memory state dict passed in
is shared with the model, not copied.

Files we write are safetensors whose metadata carries the layout ("clipav2" or "open_clip"), the
architecture name and the options that shape the weights (image size, context length, position
embedding kind, GELU, LayerNorm eps), so `load_model(path)` rebuilds the right model.
"""
import json
import os
import warnings

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from clipav2.models.arch import ClipArch, get_arch
from clipav2.models.clip import CLIP
from clipav2.models.weights_file import WeightsFileError, check_safetensors, refused_pickle

# (ours, open_clip) name pairs: whole keys first, then prefixes ending in "."
_TOP = [
    ("logit_scale", "logit_scale"),
    ("visual.patch_embed.weight", "visual.conv1.weight"),
    ("visual.class_token", "visual.class_embedding"),
    ("visual.pos_embed", "visual.positional_embedding"),
    ("visual.head.weight", "visual.proj"),
    ("text.token_embed.weight", "token_embedding.weight"),
    ("text.pos_embed", "positional_embedding"),
    ("text.head.weight", "text_projection"),
    ("visual.norm.", "visual.ln_post."),
    ("visual.norm_pre.", "visual.ln_pre."),  # CLIPA v1 (clipa_torch) and stock open_clip ViTs
    ("text.norm.", "ln_final."),
    ("visual.blocks.", "visual.transformer.resblocks."),
    ("text.blocks.", "transformer.resblocks."),
]
_BLOCK = [
    ("norm1.", "ln_1."),
    ("norm2.", "ln_2."),
    ("attn.qkv.weight", "attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.in_proj_bias"),
    ("attn.proj.", "attn.out_proj."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
]
_TRANSPOSED = {"visual.head.weight", "text.head.weight"}  # open_clip stores (width, embed) matrices
_SHAPE_OPTIONS = ("image_size", "context_length", "pos_embed", "gelu", "ln_eps")
OPEN_CLIP_CHOICES = {"gelu": "exact", "ln_eps": 1e-5, "pos_embed": "learned"}


def _rename(key: str, src: int) -> str | None:
    """Map one key; src=0 ours -> open_clip, src=1 open_clip -> ours. None when unknown."""
    dst = 1 - src
    for pair in _TOP:
        head = pair[src]
        if not head.endswith("."):
            if key == head:
                return pair[dst]
            continue
        if not key.startswith(head):
            continue
        rest = key[len(head):]
        if "blocks" not in pair[0]:
            return pair[dst] + rest
        index, _, inner = rest.partition(".")
        if not index.isdigit():
            return None
        for bpair in _BLOCK:
            name = bpair[src]
            if inner == name or (name.endswith(".") and inner.startswith(name)):
                return f"{pair[dst]}{index}.{bpair[dst]}{inner[len(name):]}"
        return None
    return None


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - 8} more" if len(keys) > 8 else ""
    return ", ".join(keys[:8]) + more


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A state dict from a path (.safetensors, or .bin/.pt/.pth via weights_only torch.load) or a
    dict; unwraps {"state_dict": ...} training checkpoints and DDP's "module." prefix."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.endswith(".safetensors"):
            check_safetensors(path)
            sd = load_file(path)
        else:
            try:
                sd = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # pickles of arbitrary objects are refused here
                raise refused_pickle(path, e) from None
    else:
        sd = source
    for wrapper in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"{source if isinstance(source, (str, os.PathLike)) else 'weights'}: "
                               f"expected a state dict of tensors, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_weights(model: CLIP, state: dict[str, torch.Tensor]) -> CLIP:
    """Strict load that names every missing, unexpected or wrongly shaped key, then takes the
    tensors over (cast to the model's parameter dtype) and recomputes the fixed buffers. A 0-d
    temperature (open_clip's, and our files before it became shape (1,)) fits our (1,) one."""
    expected = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].ndim == 0:
        state = {**state, "logit_scale": state["logit_scale"].reshape(1)}
    missing, extra = set(expected) - set(state), set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if extra:
        problems.append(f"unexpected keys: {_listing(extra)}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"wrong shapes: {_listing(shapes)}")
    if problems:
        raise ValueError(f"checkpoint does not fit {model.arch.name!r}: " + "; ".join(problems))
    cast = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(cast, strict=True, assign=True)
    model.visual.reset_buffers()
    return model


def build_and_load(arch: ClipArch, state: dict) -> CLIP:
    """A model of `arch` holding `state` (built on the meta device: nothing is initialised twice)."""
    with torch.device("meta"):
        model = CLIP(arch)
    return load_weights(model, state)


def _finish(model: CLIP, image_size=None, context_length=None) -> CLIP:
    if image_size is not None and image_size != model.visual.image_size:
        model.set_image_size(image_size)
    if context_length is not None and context_length != model.text.context_length:
        model.set_text_len(context_length)
    return model


def from_open_clip(source, name: str, **overrides) -> CLIP:
    """Our model from an open_clip state dict (path or dict) of architecture `name`, with
    open_clip's numerics (exact GELU, LayerNorm eps 1e-5, learned image table). The image size and
    context length are read from the tables; `image_size` / `context_length` overrides resample
    them after loading, other overrides (attention) go to the architecture."""
    sd = read_state_dict(source)
    unknown = [k for k in sd if _rename(k, 1) is None]
    if unknown:
        raise ValueError(f"not an open_clip CLIPA state dict for {name!r}: unexpected keys: {_listing(unknown)}")
    ours = {_rename(k, 1): v for k, v in sd.items()}
    for k in _TRANSPOSED & set(ours):
        ours[k] = ours[k].t().contiguous()
    base = get_arch(name)
    shape = {}
    if "visual.pos_embed" in ours:
        grid = int(round((ours["visual.pos_embed"].shape[0] - 1) ** 0.5))
        shape["image_size"] = grid * base.vision.patch_size
    if "text.pos_embed" in ours:
        shape["context_length"] = ours["text.pos_embed"].shape[0]
    size, length = overrides.pop("image_size", None), overrides.pop("context_length", None)
    arch = get_arch(name, **{**OPEN_CLIP_CHOICES, **shape, **overrides})
    if arch.vision.pos_embed != "learned":  # a fixed sin-cos kind asked for: the stored table is not used
        ours.pop("visual.pos_embed", None)
    return _finish(build_and_load(arch, ours), size, length)


def to_open_clip(model: CLIP) -> dict[str, torch.Tensor]:
    """Our weights in open_clip's layout (tensors shared with the model except the two heads).
    A sin-cos model exports its fixed table as open_clip's learned one (same numbers)."""
    a = model.arch
    if a.gelu != "exact" or a.ln_eps != 1e-5:
        warnings.warn(
            f"open_clip runs this model with exact GELU and LayerNorm eps 1e-5; it was built with "
            f"gelu={a.gelu!r}, ln_eps={a.ln_eps} (outputs differ slightly)",
            stacklevel=2,
        )
    sd = dict(model.state_dict())
    sd["visual.pos_embed"] = model.visual.pos_embed.detach()
    out = {}
    for k, v in sd.items():
        v = v.detach()
        out[_rename(k, 0)] = v.t().contiguous() if k in _TRANSPOSED else v
    out["logit_scale"] = out["logit_scale"].reshape(())  # open_clip's temperature is 0-d
    return out


def _metadata(model: CLIP, layout: str, meta: dict) -> dict[str, str]:
    a = model.arch
    options = {
        "image_size": a.vision.image_size,
        "context_length": a.text.context_length,
        "pos_embed": a.vision.pos_embed,
        "gelu": a.gelu,
        "ln_eps": a.ln_eps,
    }
    return {
        "format": "pt",
        "clipav2.layout": layout,
        "clipav2.arch": a.name,
        "clipav2.options": json.dumps(options),
        "clipav2.meta": json.dumps(meta, default=str),
    }


def _save(tensors: dict, path, metadata: dict) -> None:
    path = os.fspath(path)
    if not path.endswith(".safetensors"):
        raise ValueError(f"output must be a .safetensors file, got {path}")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())  # safetensors creates 0600; others on a shared filesystem read it
    os.replace(tmp, path)  # never leave a half-written file under the final name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(model: CLIP, path, **meta) -> None:
    """Our layout, safetensors, with the architecture and `meta` (any JSON-able values) in the metadata."""
    _save(model.state_dict(), path, _metadata(model, "clipav2", meta))


def save_open_clip(model: CLIP, path, **meta) -> None:
    """open_clip's layout (loadable by open_clip.create_model(name, pretrained=path)), safetensors."""
    _save(to_open_clip(model), path, _metadata(model, "open_clip", meta))


def read_metadata(path) -> dict:
    """{"layout", "arch", "options", "meta"} of a file we wrote; {} for any other safetensors file."""
    check_safetensors(path)
    with safe_open(os.fspath(path), framework="pt") as f:
        md = f.metadata() or {}
    if "clipav2.arch" not in md:
        return {}
    return {
        "layout": md.get("clipav2.layout", "clipav2"),
        "arch": md["clipav2.arch"],
        "options": json.loads(md.get("clipav2.options", "{}")),
        "meta": json.loads(md.get("clipav2.meta", "{}")),
    }


def load_model(path, name: str | None = None, **overrides) -> CLIP:
    """Rebuild a model from a file: ours (architecture from the metadata), an open_clip-layout
    file we exported, or any open_clip checkpoint when `name` is given. `image_size` /
    `context_length` overrides resample after loading; `attention` is a runtime
    choice and never stored."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    info = read_metadata(path) if path.endswith(".safetensors") else {}
    if not info:
        if name is None:
            raise ValueError(
                f"{path} carries no clipav2 metadata; if it is an open_clip checkpoint, give the "
                f"architecture name (load_model(path, name=...), or clipav2 convert --from open_clip)"
            )
        return from_open_clip(path, name, **overrides)
    if name is not None and name != info["arch"]:
        raise ValueError(f"{path} holds a {info['arch']!r} model, not {name!r}")
    options = {k: v for k, v in info["options"].items() if k in _SHAPE_OPTIONS}
    if info["layout"] == "open_clip":  # our export: keep the numerics it was trained with
        kinds = {k: options[k] for k in ("pos_embed", "gelu", "ln_eps") if k in options}
        return from_open_clip(path, info["arch"], **{**kinds, **overrides})
    size, length = overrides.pop("image_size", None), overrides.pop("context_length", None)
    model = build_and_load(get_arch(info["arch"], **{**options, **overrides}), load_file(path))
    return _finish(model, size, length)


__all__ = [
    "build_and_load", "from_open_clip", "load_model", "load_weights", "read_metadata", "read_state_dict",
    "save_model", "save_open_clip", "to_open_clip",
]
