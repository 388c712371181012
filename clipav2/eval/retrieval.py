"""Image-text retrieval recall@k over paired sets (one caption per image, pairs by position)."""
from __future__ import annotations

import torch


@torch.no_grad()
def embed_pairs(model, batches, normalize, device):
    """(N, D) image and text embeddings from batches of (uint8 images, token ids)."""
    imgs, txts = [], []
    for images, ids in batches:
        imgs.append(model.encode_image(normalize(images.to(device, non_blocking=True))).float())
        txts.append(model.encode_text(ids.to(device)).float())
    if not imgs:
        raise ValueError("retrieval set is empty")
    return torch.cat(imgs), torch.cat(txts)


def recall_at_k(image_emb: torch.Tensor, text_emb: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Pair i matches pair i. Image->text and text->image recall@k, as fractions."""
    sims = image_emb @ text_emb.T
    target = torch.arange(sims.shape[0], device=sims.device)
    out = {}
    for name, s in (("image_to_text", sims), ("text_to_image", sims.T)):
        # rank of the true match = how many candidates score strictly higher
        true = s[target, target][:, None]
        rank = (s > true).sum(1)
        for k in ks:
            out[f"{name}_R@{k}"] = (rank < k).float().mean().item()
    return out
