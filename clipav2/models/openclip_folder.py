"""open_clip model folders: the layout open_clip reads from the Hugging Face Hub and from
`open_clip.create_model_and_transforms("local-dir:" + folder)`:

    FOLDER/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": ...}
    FOLDER/open_clip_model.safetensors  the weights in open_clip's names (our metadata inside)
    FOLDER/vocab.txt, tokenizer_config.json  the WordPiece tokenizer (CLIPA-v2 text towers), which
                                      `open_clip.get_tokenizer("local-dir:" + folder)` loads from the
                                      folder through Hugging Face's AutoTokenizer, offline

`model_cfg` carries the numerics the weights were trained with, through open_clip's
`act_kwargs` / `norm_kwargs` (tanh GELU, LayerNorm eps 1e-6 for the JAX-trained CLIPA-v2 weights),
so open_clip builds the same function without the user knowing to pass them. `preprocess_cfg` is
the evaluation preprocessing of the trainer: ImageNet mean/std, bilinear resize (CLIPA-v2's
evaluator), squashed to the square for a fine-tuned model (the fine-tune stage's eval transform),
short side + centre crop for a pre-training one. The key names follow open_clip's factory.py
(`_find_checkpoint_in_dir`, `merge_preprocess_dict`) and model.py (`CLIPVisionCfg`, `CLIPTextCfg`).
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

from clipav2.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from clipav2.models.arch import ClipArch

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"
# our eval transform -> open_clip's resize_mode
RESIZE_MODES = {"resize": "squash", "center_crop": "shortest"}


def wordpiece(arch: ClipArch) -> bool:
    """Whether the text tower reads bert-base-uncased WordPiece ids (CLIPA-v2), not CLIP's BPE (v1)."""
    return arch.text.vocab_size == 32000


def model_cfg(arch: ClipArch) -> dict:
    """open_clip's model config (the fields of its ViT-*-CLIPA.json) for `arch`, numerics explicit."""
    v, t = arch.vision, arch.text
    if v.pool not in ("avg", "tok"):
        raise ValueError(f"{arch.name}: open_clip's ViT has no {v.pool!r} image pool (clipa_torch's own); "
                         f"export it as a .safetensors file for clipa_torch instead")
    numerics = {"act_kwargs": {"approximate": "tanh" if arch.gelu == "tanh" else "none"},
                "norm_kwargs": {"eps": arch.ln_eps}}
    # CLIPA-v2's text tower is WordPiece (bert-base-uncased, [SEP] stripped); v1's is CLIP's BPE, open_clip's default
    tokenizer = ({"hf_tokenizer_name": "bert-base-uncased", "tokenizer_kwargs": {"strip_sep_token": True}}
                 if wordpiece(arch) else {})
    return {
        "embed_dim": arch.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size, "layers": v.depth, "width": v.width, "head_width": v.width // v.heads,
            "mlp_ratio": v.mlp / v.width, "patch_size": v.patch_size, "no_ln_pre": not v.ln_pre,
            "pool_type": v.pool, "final_ln_after_pool": True, **numerics,
        },
        "text_cfg": {
            "context_length": t.context_length, "vocab_size": t.vocab_size, **tokenizer,
            "width": t.width, "heads": t.heads, "layers": t.depth, "mlp_ratio": t.mlp / t.width,
            "pool_type": t.pool, "no_causal_mask": not t.causal, **numerics,
        },
    }


def preprocess_cfg(image_size: int, eval_transform: str = "resize") -> dict:
    return {"size": image_size, "mode": "RGB", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
            "interpolation": "bilinear", "resize_mode": RESIZE_MODES[eval_transform]}


def write_tokenizer(folder: Path, vocab, context_length: int) -> None:
    """vocab.txt and the tokenizer_config.json that makes AutoTokenizer build a lower-casing BERT
    tokenizer from it (its special tokens are BERT's defaults: [CLS], [SEP], [PAD], [UNK], [MASK])."""
    shutil.copyfile(vocab, folder / "vocab.txt")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": context_length}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def write_folder(model, folder, eval_transform: str = "resize", vocab=None, **meta) -> Path:
    """Write `model` as an open_clip model folder (created if needed); returns the weights path.
    `vocab`: the WordPiece vocabulary file of a CLIPA-v2 text tower (required for one)."""
    if wordpiece(model.arch) and vocab is None:
        raise ValueError(f"{model.arch.name}: its WordPiece vocabulary is needed to write the folder's tokenizer")
    from clipav2.models.convert import save_open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS
    with warnings.catch_warnings():  # "open_clip runs this model with exact GELU": not from this folder
        warnings.filterwarnings("ignore", message="open_clip runs this model")
        save_open_clip(model, weights, **meta)
    if wordpiece(model.arch):
        write_tokenizer(folder, vocab, model.arch.text.context_length)
    doc = {"model_cfg": model_cfg(model.arch), "preprocess_cfg": preprocess_cfg(model.arch.vision.image_size, eval_transform)}
    tmp = folder / (CONFIG + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, folder / CONFIG)
    return weights


def read_folder(folder) -> tuple[Path, dict]:
    """(weights file, numerics {gelu, ln_eps}) of an open_clip model folder, ours or anyone's:
    the numerics come from its model_cfg (open_clip's defaults, exact GELU and eps 1e-5, when unset)."""
    folder = Path(folder)
    config = folder / CONFIG
    if not config.is_file():
        raise FileNotFoundError(f"{folder}: not an open_clip model folder (no {CONFIG})")
    try:
        cfg = json.loads(config.read_text())["model_cfg"]
        vision = cfg["vision_cfg"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config}: no model_cfg.vision_cfg ({e})") from None
    weights = next((folder / n for n in (WEIGHTS, "open_clip_pytorch_model.bin") if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder}: no {WEIGHTS} (or open_clip_pytorch_model.bin)")
    act = (vision.get("act_kwargs") or {}).get("approximate", "none")
    eps = (vision.get("norm_kwargs") or {}).get("eps", 1e-5)
    return weights, {"gelu": "tanh" if act == "tanh" else "exact", "ln_eps": float(eps)}
