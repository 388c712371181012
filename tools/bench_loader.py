"""Images/s per CPU core of the training image transform: ours (with and without the fast
low-resolution JPEG decode, and on files pre-resized for the stage) beside open_clip's training
transform with the same augmentation, over the same realistic JPEGs, in one run.

    python tools/bench_loader.py                 # 84, 224, 336 px; 256 files
    python tools/bench_loader.py --sizes 84 --files 512 --json

The files are scikit-image's sample photographs, randomly cropped and rescaled to a long side of
256-640 px, saved as JPEG quality 90 (in memory). Each pipeline starts from the encoded bytes
and ends with the tensor the trainer receives. Time is the process's CPU time on one thread, so
the figure is per core even on a busy machine.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from clipav2.data.make import shrink  # noqa: E402
from clipav2.data.transforms import TrainTransform  # noqa: E402

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
          "stereo_motorcycle", "camera", "moon")
CLIPA_AUG = {"scale": (0.4, 1.0), "color_jitter": (0.32, 0.32, 0.32, 0.08), "color_jitter_prob": 0.8,
             "gray_scale_prob": 0.2}


def realistic_jpegs(n: int, seed: int = 0, quality: int = 90) -> list[bytes]:
    from skimage import data

    sources = []
    for name in PHOTOS:
        img = getattr(data, name)()
        img = img[0] if isinstance(img, tuple) else img
        sources.append(Image.fromarray(img).convert("RGB"))
    rng = random.Random(seed)
    files = []
    for i in range(n):
        src = sources[i % len(sources)]
        w, h = src.size
        frac = rng.uniform(0.5, 1.0) ** 0.5
        cw, ch = int(w * frac), int(h * frac)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        long_side = rng.randint(256, 640)
        scale = long_side / max(cw, ch)
        img = src.crop((left, top, left + cw, top + ch)).resize((round(cw * scale), round(ch * scale)), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        files.append(buf.getvalue())
    return files


def rate(fn, files, min_seconds: float) -> float:
    """Images per CPU-second of `fn(bytes)` over the files (repeated to at least min_seconds)."""
    fn(files[0])  # warm-up (lazy imports, caches)
    done, start = 0, time.process_time()
    while True:
        for data in files:
            fn(data)
        done += len(files)
        spent = time.process_time() - start
        if spent >= min_seconds:
            return done / spent


def pipelines(size: int, seed: int = 0):
    import open_clip
    from open_clip.transform import AugmentationCfg

    # open_clip applies color_jitter / gray_scale_prob yet warns they are unused (3.3.0): silence it
    warnings.filterwarnings("ignore", message="Unused augmentation cfg items")
    oc = open_clip.image_transform(size, is_train=True, aug_cfg=AugmentationCfg(**CLIPA_AUG))
    ours = {fast: TrainTransform(size, fast_decode=fast) for fast in (True, False)}
    rng = random.Random(seed)
    return {
        # open_clip's webdataset path decodes with PIL ("pilrgb"), then applies the transform
        "open_clip": lambda b: oc(Image.open(io.BytesIO(b)).convert("RGB")),
        "ours, full decode": lambda b: ours[False](b, rng),
        "ours, fast decode": lambda b: ours[True](b, rng),
    }


def text_rate(min_seconds: float):
    """Captions/s of the syntax-reduced (8 token) text transform, if a vocabulary is at hand."""
    if not os.environ.get("CLIPAV2_VOCAB"):
        return None
    from clipav2.config import StageConfig
    from clipav2.data.demo import caption, random_scene
    from clipav2.text import make_text_transform

    transform = make_text_transform(StageConfig(text_len=8, text_reduction="syntax"), None, 0)
    rng = random.Random(0)
    captions = [caption(random_scene(rng, rng.randint(1, 4))) for _ in range(256)]
    keys = iter(range(10**9))
    return rate(lambda c: transform(c, str(next(keys))), captions, min_seconds)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[84, 224, 336])
    p.add_argument("--files", type=int, default=256)
    p.add_argument("--seconds", type=float, default=3.0, help="minimum CPU seconds per measurement")
    p.add_argument("--pre-resize", type=int, default=112, help="also time files pre-resized to this short side "
                                                                "(for the smallest size); 0: skip")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    files = realistic_jpegs(args.files)
    sizes = [Image.open(io.BytesIO(f)).size for f in files]
    mean_kb = np.mean([len(f) for f in files]) / 1024
    results = {"files": len(files), "mean_kb": round(mean_kb, 1), "mean_px": [round(float(np.mean(s)), 1) for s in zip(*sizes)],
               "rates": {}}
    for size in args.sizes:
        row = {name: rate(fn, files, args.seconds) for name, fn in pipelines(size).items()}
        if args.pre_resize and size == min(args.sizes):
            small = [shrink(f, args.pre_resize, 90) for f in files]
            row[f"ours, fast decode, files pre-resized to {args.pre_resize} px"] = rate(pipelines(size)["ours, fast decode"], small, args.seconds)
        results["rates"][size] = {k: round(v, 1) for k, v in row.items()}
    text = text_rate(args.seconds)
    if text:
        results["text_syntax_8_per_s"] = round(text, 1)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"{len(files)} JPEGs (quality 90, mean {results['mean_px'][0]:.0f} x {results['mean_px'][1]:.0f} px, "
          f"{mean_kb:.0f} kB); images/s per core (CPU time, 1 thread)")
    for size, row in results["rates"].items():
        base = row["open_clip"]
        print(f"{size} px:")
        for name, value in row.items():
            print(f"  {name:<48} {value:8.1f}  ({value / base:.2f}x open_clip)")
    if text:
        print(f"text transform (syntax, 8 tokens): {text:.0f} captions/s per core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
