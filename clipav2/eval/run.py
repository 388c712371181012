"""Evaluate a model the way a stage is evaluated, under the config's `eval.protocol`
(`clipav2.eval.protocol`, docs/eval.md): the stage's image size and eval transform (pre-training:
short side + centre crop; fine-tuning: direct resize), prompts tokenized at the stage's text
length, tokenizer mode and (clipa) text reduction.

With `world` (a distributed run, evaluating its live model while it trains and at a stage's end)
every rank classifies its own share of the set and the counts are summed, and embeds its share of
the retrieval pairs, which every rank then gathers; the forwards run in lock-step (a rank whose
share is done runs placeholder forwards while others still have images), because FSDP2 and
ZeRO-3 gather the parameters collectively inside every forward."""
from __future__ import annotations

import torch

from clipav2.eval import protocol, retrieval, sets, zeroshot


def evaluate(model, cfg, stage, device, classify_path=None, retrieval_path=None, world=None) -> dict:
    """{"zero_shot": {...top1, top5, n, classes, chance}, "retrieval": {...R@k}} for the sets
    given (default: the config's data.eval / data.retrieval). `model` has `encode_image` and
    `encode_text` (a plain CLIP module, or `periodic.EngineModel`). With a distributed `world`
    the sets are split over the ranks (a collective: every rank calls it) and every rank gets
    the figures of the whole sets."""
    from clipav2.data import normalize
    from clipav2.data.loader import loader_workers
    from clipav2.parallel.apply import eager

    shared = world is not None and world.distributed
    classify_path = classify_path or cfg.data.eval
    retrieval_path = retrieval_path or cfg.data.retrieval
    how = cfg.eval.protocol
    part = (world.rank, world.world_size) if shared else (0, 1)
    workers = loader_workers(cfg.data, device)
    tok = protocol.prompt_tokenizer(how, stage, vocab=cfg.data.vocab, seed=cfg.seed)
    kind = protocol.image_kind(how, stage.eval_transform)

    out = {}
    model.eval()
    # compiled blocks run eager here: evaluation's batch shapes would each compile new graphs
    with torch.no_grad(), eager(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if classify_path:
            names, prompts = protocol.zero_shot_prompts(how, cfg.data.eval_classnames, cfg.data.eval_templates, classify_path)
            classes = zeroshot.class_embeddings(model, names, prompts, tok, device)
            batches = sets.classification_batches(classify_path, stage.image_size, kind, cfg.eval.batch_size,
                                                  workers, how, len(names), cfg.data.fast_decode, part)
            if shared:
                result = _classify_shared(model, batches, classes, normalize, device, world, stage.image_size)
            else:
                result = zeroshot.classify(model, batches, classes, normalize, device)
            out["zero_shot"] = {**result, "classes": len(names), "chance": 1.0 / len(names), "ranks": part[1]}
            out["zero_shot"].setdefault("skipped", batches.skipped)
        if retrieval_path:
            batches = sets.retrieval_batches(retrieval_path, stage.image_size, kind,
                                             cfg.eval.batch_size, tok, workers, how, cfg.data.fast_decode, part)
            if shared:
                img, txt, skipped = _embed_pairs_shared(model, batches, normalize, device, world, stage)
            else:
                (img, txt), skipped = retrieval.embed_pairs(model, batches, normalize, device), batches.skipped
            out["retrieval"] = {**retrieval.recall_at_k(img, txt), "n": img.shape[0], "skipped": skipped, "ranks": part[1]}
    return out


class _Lockstep:
    """This rank's batches, for as long as any rank has one; once this rank's share is done it
    runs `placeholder()` (one forward) per batch the others still take."""

    def __init__(self, batches, world, placeholder):
        self.batches, self.world, self.placeholder, self.real = batches, world, placeholder, 0

    def __iter__(self):
        from clipav2.parallel.env import any_rank

        it = iter(self.batches)
        while True:
            batch = next(it, None)
            if not any_rank(self.world, batch is not None):
                return
            if batch is None:
                self.placeholder()
            else:
                self.real += 1
                yield batch


def _classify_shared(model, batches, classes, normalize, device, world, image_size) -> dict:
    import torch.distributed as dist

    placeholder = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)
    steps = _Lockstep(batches, world, lambda: model.encode_image(normalize(placeholder.to(device))))
    try:
        local = zeroshot.classify(model, steps, classes, normalize, device)
    except ValueError:
        if steps.real:
            raise
        local = {"top1": 0.0, "top5": 0.0, "n": 0}  # this rank's share of the set was empty
    keys = sorted(k for k in local if k.startswith("top"))
    counts = torch.tensor([local[k] * local["n"] for k in keys] + [local["n"], batches.skipped], dtype=torch.float64, device=device)
    dist.all_reduce(counts)
    n = int(round(counts[-2].item()))
    if n == 0:
        raise ValueError("zero-shot evaluation set is empty")
    return {**{k: counts[i].item() / n for i, k in enumerate(keys)}, "n": n, "skipped": int(round(counts[-1].item()))}


def _embed_pairs_shared(model, batches, normalize, device, world, stage):
    """Every rank embeds its share of the pairs in lock-step (a placeholder image and text forward
    per batch the others still take), then gathers every rank's: pairs stay aligned, and recall
    does not depend on their order. -> (image, text, records skipped on all ranks)."""
    import torch.distributed as dist

    image = torch.zeros(1, 3, stage.image_size, stage.image_size, dtype=torch.uint8)
    ids = torch.zeros(1, stage.text_len, dtype=torch.long)

    def placeholder():
        model.encode_image(normalize(image.to(device)))
        model.encode_text(ids.to(device))

    steps = _Lockstep(batches, world, placeholder)
    try:
        img, txt = retrieval.embed_pairs(model, steps, normalize, device)
    except ValueError:
        if steps.real:
            raise
        img = txt = None  # this rank's share of the set was empty
    width = torch.tensor([img.shape[1] if img is not None else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    empty = torch.zeros(0, int(width.item()), device=device)
    both = _gather_rows(torch.cat([img, txt], 1) if img is not None else torch.cat([empty, empty], 1), world)
    if both.shape[0] == 0:
        raise ValueError("retrieval set is empty")
    skipped = torch.tensor([batches.skipped], dtype=torch.float64, device=device)
    dist.all_reduce(skipped)
    return both[:, : both.shape[1] // 2], both[:, both.shape[1] // 2:], int(round(skipped.item()))


def _gather_rows(x: torch.Tensor, world) -> torch.Tensor:
    """Every rank's rows of `x` (N_rank, D), concatenated in rank order on every rank."""
    import torch.distributed as dist

    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world.world_size)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.long, device=x.device))
    most = max(int(n.item()) for n in sizes)
    padded = torch.zeros(most, x.shape[1], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


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
        parts.append("retrieval " + " ".join(f"{k} {100 * v:.1f}%" for k, v in r.items() if k not in ("n", "skipped", "ranks")))
    return f"[{stage_name}] " + ("; ".join(parts) if parts else "no evaluation set configured")
