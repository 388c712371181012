"""Evaluators against closed forms: recall@k from embeddings whose rankings are known by
construction, and zero-shot top-k with a stand-in model whose embeddings are fixed vectors."""
import pytest
import torch

from clipav2.eval.retrieval import recall_at_k
from clipav2.eval.zeroshot import class_embeddings, classify


def test_recall_at_k_closed_form():
    # image i's true text is placed at rank r_i (0 = best) among all texts by construction
    n = 20
    ranks = torch.tensor([0, 1, 2, 4, 9, 12] + [0] * 14)  # wanted rank of the true text for image i
    sims = torch.zeros(n, n)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        order = others[: ranks[i]] + [i] + others[ranks[i]:]  # best first
        for pos, j in enumerate(order):
            sims[i, j] = -float(pos)
    # factor sims = img @ txt.T exactly: img = sims rows, txt = identity
    out = recall_at_k(sims, torch.eye(n))
    for k in (1, 5, 10):
        assert out[f"image_to_text_R@{k}"] == pytest.approx((ranks < k).float().mean().item())
    assert 0 <= out["text_to_image_R@1"] <= 1


class FixedModel(torch.nn.Module):
    """Text embeddings one-hot by the first token; image embeddings one-hot by mean brightness
    bucket (0-63 -> 0, ... 192-255 -> 3)."""

    def encode_text(self, ids):
        return torch.nn.functional.one_hot(ids[:, 0] % 4, 4).float()

    def encode_image(self, images):
        bucket = (images.mean(dim=(1, 2, 3)) * 4).long().clamp(0, 3)
        return torch.nn.functional.one_hot(bucket, 4).float()


def test_zero_shot_top_k_closed_form():
    model = FixedModel()
    names = ["a", "b", "c", "d"]

    def tokenize(prompts):  # the class index is the first token
        return torch.tensor([[names.index(p.split()[-1])] for p in prompts])

    classes = class_embeddings(model, names, ["a photo of {}", "{}"], tokenize, torch.device("cpu"))
    torch.testing.assert_close(classes, torch.eye(4))
    # 8 images: brightness buckets 0,1,2,3,0,1,2,3; labels right for the first 6 only
    levels = torch.tensor([0.1, 0.3, 0.6, 0.9] * 2)
    images = levels[:, None, None, None].expand(8, 3, 4, 4).clone()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 3, 2])
    out = classify(model, [(images, labels)], classes, lambda x: x, torch.device("cpu"), ks=(1, 5))
    assert out == {"top1": 6 / 8, "top5": 1.0, "n": 8}
