"""Captions per second on one CPU core for every text reduction at L = 8 and 32, beside open_clip's
syntax-mask tokenizer in the same run, then the image tower's forward time under each image
reduction. Times are this process's CPU time (single-threaded and pinned to one core, so it is the
core's time, and other processes sharing the machine barely move it), best of --repeats passes; a
pass over 15 s is not repeated.

    NLTK_DATA=... CLIPAV2_VOCAB=... python tools/bench_text.py [--captions 10000] [--repeats 3]

open_clip runs offline: its nltk.download calls are skipped and word_tokenize runs without punkt's
sentence splitter (preserve_line=True, as ours does), which only makes the baseline faster.
"""
import argparse
import functools
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from clipav2.config import StageConfig  # noqa: E402
from clipav2.reduce.text import REDUCTIONS as TEXT_REDUCTIONS  # noqa: E402
from clipav2.text import make_text_transform  # noqa: E402
from clipav2.text.captions import generate_captions  # noqa: E402

REDUCTIONS = tuple(TEXT_REDUCTIONS)


def best_rate(run, captions, repeats: int) -> float:
    """Captions/s of `run(captions)`, best of `repeats` passes after a warm-up (slow ones: one pass)."""
    run(captions[:200])  # lazy backends, the tagger, caches
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = time.process_time()
        run(captions)
        best = min(best, time.process_time() - start)
        spent += best
        if spent > 15:
            break
    return len(captions) / best


def per_sample(transform):
    def run(captions):
        for i, caption in enumerate(captions):
            transform(caption, str(i))
    return run


def open_clip_syntax(length: int, batch: int):
    import nltk
    import open_clip.tokenizer as oc

    oc._nltk_init = True
    if not isinstance(nltk.tokenize.word_tokenize, functools.partial):
        nltk.tokenize.word_tokenize = functools.partial(nltk.tokenize.word_tokenize, preserve_line=True)
    tok = oc.SimpleTokenizer(context_length=length, reduction_mask="syntax")

    def run(captions):
        for i in range(0, len(captions), batch):
            tok(captions[i : i + batch])
    return run


def bench_text(captions, repeats: int) -> int:
    print(f"## text: captions/s on one core, {len(captions)} captions "
          f"({sum(len(c.split()) for c in captions) / len(captions):.1f} words on average)")
    print("| reduction | L=8 | L=32 |\n|---|---|---|")
    rates = {}
    for name in REDUCTIONS:
        rates[name] = [best_rate(per_sample(make_text_transform(StageConfig(text_len=L, text_reduction=name))), captions, repeats)
                       for L in (8, 32)]
    # open_clip's data pipelines call it per sample; batches of 256 are its best case
    for batch in (1, 256):
        rates[f"open_clip syntax_mask_tokenize, {batch} per call"] = [
            best_rate(open_clip_syntax(L, batch), captions, repeats) for L in (8, 32)]
    for name, (r8, r32) in rates.items():
        print(f"| {name} | {r8:,.0f} | {r32:,.0f} |")
    fastest = [max(pair) for pair in zip(*(r for n, r in rates.items() if n.startswith("open_clip")))]
    ratios = [ours / theirs for ours, theirs in zip(rates["syntax"], fastest)]
    print(f"vocabulary-level syntax / open_clip's syntax at its fastest: {ratios[0]:.1f}x at L=8, "
          f"{ratios[1]:.1f}x at L=32 (need >= 20x)")
    return 0 if min(ratios) >= 20 else 1


def bench_image(repeats: int, arch: str = "demo", batch: int = 64) -> None:
    from clipav2.models import create_model
    from clipav2.models.flops import image_flops
    from clipav2.reduce.image import keep_indices

    torch.manual_seed(0)
    model = create_model(arch).eval()
    v = model.arch.vision
    images = torch.randn(batch, 3, v.image_size, v.image_size)
    gen = torch.Generator().manual_seed(0)
    print(f"\n## image: encode_image forward, {arch} ({v.grid}x{v.grid} patches), batch {batch}, fp32, 1 thread")
    print("| reduction | kept patches | ms / batch | GFLOPs / sample |\n|---|---|---|---|")
    for kind, ratio in (("resize", 0.0), ("random", 0.5), ("block", 0.5), ("random", 0.75), ("grid", 0.75), ("block", 0.75)):
        keep = keep_indices(kind, (v.grid, v.grid), batch, ratio, 2, gen)
        kept = v.grid**2 if keep is None else keep.shape[1]
        with torch.no_grad():
            model.encode_image(images, keep=keep)
            best = float("inf")
            for _ in range(repeats + 2):
                start = time.process_time()
                model.encode_image(images, keep=keep)
                best = min(best, time.process_time() - start)
        label = "none (full grid)" if kind == "resize" else f"{kind} {ratio:.0%}"
        print(f"| {label} | {kept} | {best * 1e3:.1f} | {image_flops(model.arch, kept_image_tokens=kept) / 1e9:.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--core", type=int, default=0, help="the CPU core to pin to")
    parser.add_argument("--no-image", action="store_true", help="skip the image forward timings")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    code = bench_text(generate_captions(args.captions, seed=0), args.repeats)
    if not args.no_image:
        bench_image(args.repeats)
    return code


if __name__ == "__main__":
    sys.exit(main())
