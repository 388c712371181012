"""Zero-shot protocols (`eval.protocol`): how prompts are written and tokenized and how images are
resized. See docs/eval.md.

    clipa      big_vision's zero-shot evaluator as CLIPA configures it (clipa_jax/evaluators/proj/
               image_text/discriminative_classifier.py, prompt_engineering.py, configs/model_h/*):
               class names and templates canonicalised (lower-case, punctuation removed, first
               alias), CLIP's 80 templates plus the bare class name, prompts tokenized by the
               stage's own text transform (length and reduction: the syntax mask at T8), images
               resized bilinear with antialiasing (short side + centre crop for pre-training
               stages, a direct resize for fine-tuning stages)
    open_clip  open_clip's zero-shot classifier: its 80 templates and class names as written,
               prompts truncated to the stage's length, images resized bicubic (short side +
               centre crop) whatever the stage
"""
from __future__ import annotations

import re
import string

from clipav2.data.transforms import PROTOCOLS  # noqa: F401  (eval.protocol; its lowest user is the image side)

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def canonicalize(text: str, keep: str | None = None) -> str:
    """big_vision's `_canonicalize`: underscores to spaces, ASCII punctuation removed (except each
    exact occurrence of `keep`), lower-case, whitespace runs collapsed, stripped."""
    text = text.replace("_", " ")
    parts = text.split(keep) if keep else [text]
    text = (keep or "").join(part.translate(_PUNCTUATION) for part in parts)
    return re.sub(r"\s+", " ", text.lower()).strip()


def class_names(names: list[str], protocol: str) -> list[str]:
    """clipa: canonicalised keeping the alias separator ",", then the first alias only."""
    if protocol == "open_clip":
        return list(names)
    return [canonicalize(name, keep=",").split(",")[0] for name in names]


def templates(found: list[str], protocol: str, named: str) -> list[str]:
    """clipa: canonicalised keeping "{}"; the named ImageNet set gains big_vision's bare "{}"
    (its `clip_paper` templates are CLIP's 80 and the class name alone)."""
    if protocol == "open_clip":
        return list(found)
    out = [canonicalize(t, keep="{}") for t in found]
    return out + ["{}"] if named == "imagenet" and "{}" not in out else out


def zero_shot_prompts(protocol: str, names_spec: str, templates_spec: str, eval_path=None):
    """(class names, templates) for `data.eval_classnames` / `data.eval_templates`, as the protocol writes them."""
    from clipav2.eval import sets

    names = class_names(sets.classnames(names_spec, eval_path), protocol)
    return names, templates(sets.templates(templates_spec, eval_path), protocol, templates_spec)


def image_kind(protocol: str, stage_kind: str) -> str:
    """The EvalTransform kind: open_clip always crops; clipa follows the stage."""
    return "center_crop" if protocol == "open_clip" else stage_kind


def prompt_tokenizer(protocol: str, stage, vocab=None, seed: int = 0):
    """texts -> LongTensor (N, stage.text_len). clipa: the stage's own text transform (a prompt is
    its own sample key, so the randomised reductions draw the same for it every time); open_clip:
    truncation."""
    import torch

    from clipav2.text import make_text_transform, tokenize

    if protocol == "open_clip" or stage.text_reduction == "truncate":
        return lambda texts: tokenize(texts, stage.text_len, stage.tokenizer_mode, vocab=vocab)
    transform = make_text_transform(stage, vocab=vocab, seed=seed)

    def run(texts):
        rows = [transform(text, text) for text in texts]
        return torch.stack(rows) if rows else torch.zeros(0, stage.text_len, dtype=torch.long)

    return run
