"""Evaluate a model the way a stage is evaluated, under the config's `eval.protocol`
(`clipav2.eval.protocol`, docs/eval.md): the stage's image size and eval transform (pre-training:
short side + centre crop; fine-tuning: direct resize), prompts tokenized at the stage's text
length, tokenizer mode and (clipa) text reduction."""
from __future__ import annotations

import torch

from clipav2.eval import protocol, retrieval, sets, zeroshot


def evaluate(model, cfg, stage, device, classify_path=None, retrieval_path=None) -> dict:
    """{"zero_shot": {...top1, top5, n, classes, chance}, "retrieval": {...R@k}} for the sets
    given (default: the config's data.eval / data.retrieval). `model` is a plain CLIP module."""
    from clipav2.data import normalize

    classify_path = classify_path or cfg.data.eval
    retrieval_path = retrieval_path or cfg.data.retrieval
    how = cfg.eval.protocol
    tok = protocol.prompt_tokenizer(how, stage, vocab=cfg.data.vocab, seed=cfg.seed)
    kind = protocol.image_kind(how, stage.eval_transform)

    out = {}
    model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if classify_path:
            names, prompts = protocol.zero_shot_prompts(how, cfg.data.eval_classnames, cfg.data.eval_templates, classify_path)
            classes = zeroshot.class_embeddings(model, names, prompts, tok, device)
            batches = sets.classification_batches(classify_path, stage.image_size, kind, cfg.eval.batch_size,
                                                  cfg.data.workers, how, len(names), cfg.data.fast_decode)
            result = zeroshot.classify(model, batches, classes, normalize, device)
            out["zero_shot"] = {**result, "classes": len(names), "chance": 1.0 / len(names), "skipped": batches.skipped}
        if retrieval_path:
            batches = sets.retrieval_batches(retrieval_path, stage.image_size, kind,
                                             cfg.eval.batch_size, tok, cfg.data.workers, how, cfg.data.fast_decode)
            img, txt = retrieval.embed_pairs(model, batches, normalize, device)
            out["retrieval"] = {**retrieval.recall_at_k(img, txt), "n": img.shape[0], "skipped": batches.skipped}
    return out


def describe(stage_name: str, result: dict) -> str:
    """One human line per evaluation, e.g. for the demo's stdout."""
    parts = []
    z = result.get("zero_shot")
    if z:
        parts.append(f"zero-shot top-1 {100 * z['top1']:.1f}% top-5 {100 * z['top5']:.1f}% "
                     f"on {z['n']} images, {z['classes']} classes (chance {100 * z['chance']:.1f}%)"
                     + (f", {z['skipped']} unreadable skipped" if z.get("skipped") else ""))
    r = result.get("retrieval")
    if r:
        parts.append("retrieval " + " ".join(f"{k} {100 * v:.1f}%" for k, v in r.items() if k not in ("n", "skipped")))
    return f"[{stage_name}] " + ("; ".join(parts) if parts else "no evaluation set configured")
