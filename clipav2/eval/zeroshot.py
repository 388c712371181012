"""Zero-shot classification: class embeddings from prompt templates (mean of the normalised
prompt embeddings, renormalised, as CLIP does), then top-k accuracy of image embeddings."""
from __future__ import annotations

import torch


@torch.no_grad()
def class_embeddings(model, classnames, templates, tokenize, device, batch_size: int = 256) -> torch.Tensor:
    """(C, D) unit vectors. `templates` are format strings with one `{}` (or callables);
    `tokenize(list[str]) -> LongTensor (N, L)`."""
    rows = []
    for name in classnames:
        prompts = [t(name) if callable(t) else t.format(name) for t in templates]
        embs = torch.cat([model.encode_text(tokenize(prompts[i : i + batch_size]).to(device))
                          for i in range(0, len(prompts), batch_size)])
        mean = embs.float().mean(0)
        rows.append(mean / mean.norm())
    return torch.stack(rows)


@torch.no_grad()
def classify(model, batches, classes: torch.Tensor, normalize, device, ks=(1, 5)) -> dict:
    """Top-k accuracy over `batches` of (uint8 images (B,3,H,W), labels (B,)). Returns
    {"top1": .., "top5": .., "n": ..}; k above the number of classes counts as always right."""
    correct = {k: 0 for k in ks}
    n = 0
    for images, labels in batches:
        feats = model.encode_image(normalize(images.to(device, non_blocking=True))).float()
        logits = feats @ classes.T
        labels = labels.to(device)
        top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
        for k in ks:
            correct[k] += (top[:, :k] == labels[:, None]).any(1).sum().item()
        n += labels.numel()
    if n == 0:
        raise ValueError("zero-shot evaluation set is empty")
    return {**{f"top{k}": correct[k] / n for k in ks}, "n": n}
