"""The demo data set: captioned synthetic scenes drawn with PIL, deterministic from a seed.

A scene has 1-3 objects (shape, colour, size, texture, position) on a coloured background: one
dominant main object (medium or large, drawn on top) and smaller others. Objects are big enough
(radius 15-36% of the side) that their shape survives the 32 px pre-training resolution. The
caption names the main object's colour and shape first, then the others ("a red circle (large,
striped) is shown next to two small blue triangles"). It does not name the background or where
things are: those would tell a batch's captions apart without the shapes, and a contrastive
model learns only what it needs to tell its batch apart. Nouns carry the shapes (and most
colours), adjectives sizes and the rest, the verbs ("is shown", "appears") nothing, so the syntax
mask keeps the objects and drops filler. The held-out split has one object per image and a label
per (shape, colour) for zero-shot evaluation.

    write_demo("/tmp/demo", seed=0)   # /tmp/demo/train/*.tar, /tmp/demo/eval/*.tar + class names
"""
from __future__ import annotations

import io
import json
import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

from clipav2.data.shards import ShardSink

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
          "yellow": (235, 215, 40), "purple": (140, 60, 180), "orange": (245, 140, 30)}
BACKGROUNDS = {"grey": (128, 128, 128), "white": (235, 235, 230), "black": (25, 25, 30),
               "brown": (115, 85, 55), "pink": (240, 185, 200), "teal": (40, 120, 120)}
SIZES = {"small": 0.15, "medium": 0.28, "large": 0.36}  # radius as a fraction of the image side
MAIN_SIZES, OTHER_SIZES = ("medium", "large"), ("small",)
N_OBJECTS = (1, 1, 1, 2, 3)  # objects per training scene, drawn uniformly from this tuple
TEXTURES = ("plain", "plain", "plain", "plain", "striped", "dotted")  # mostly plain: the outline stays clear
# Verbs the syntax table ranks below nouns and adjectives (tagged on their own, "sits" would be a noun).
VERBS = (("is shown", "are shown"), ("appears", "appear"), ("is seen", "are seen"), ("is drawn", "are drawn"), ("is pictured", "are pictured"))
NUMBERS = {2: "two", 3: "three"}
TEMPLATES = ("a {}.", "a photo of a {}.", "a drawing of a {}.", "a picture of one {}.",
             "a {} on a plain background.", "there is a {} in the picture.")
SUPERSAMPLE = 2  # draw at 2x and downsample: smooth edges at 64 px


def classnames() -> list[str]:
    """Zero-shot classes of the held-out split: "<colour> <shape>", label = shape * 6 + colour."""
    return [f"{c} {s}" for s in SHAPES for c in COLORS]


def templates() -> list[str]:
    return list(TEMPLATES)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list:
    if shape == "square":
        k = r * 0.8
        return [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + i * math.pi / 5),
                 cy + (r if i % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    if shape == "cross":
        a, b = 0.33 * r, r
        pts = [(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b), (-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a), (-a, b)]
        return [(cx + x, cy + y) for x, y in pts]
    raise ValueError(shape)


def _fill(side: int, texture: str, color, rng: random.Random) -> Image.Image:
    """A side x side layer in `color` with the texture drawn in a lighter shade."""
    layer = Image.new("RGB", (side, side), color)
    if texture == "plain":
        return layer
    light = tuple(min(255, v + 110) for v in color)
    draw = ImageDraw.Draw(layer)
    step = side // 10
    if texture == "striped":
        for x in range(-side, side, step):
            draw.line([(x, 0), (x + side, side)], fill=light, width=step // 2)
    elif texture == "dotted":
        for y in range(step // 2, side, step):
            for x in range(step // 2, side, step):
                draw.ellipse([x - step // 4, y - step // 4, x + step // 4, y + step // 4], fill=light)
    else:  # checkered
        for y in range(0, side, step):
            for x in range((y // step) % 2 * step, side, 2 * step):
                draw.rectangle([x, y, x + step - 1, y + step - 1], fill=light)
    return layer


def _background(side: int, name: str, rng: random.Random) -> Image.Image:
    base = [v + rng.randint(-15, 15) for v in BACKGROUNDS[name]]
    if rng.random() < 0.5:
        return Image.new("RGB", (side, side), tuple(base))
    top = tuple(max(0, min(255, v + 30)) for v in base)  # a vertical gradient
    bottom = tuple(max(0, min(255, v - 30)) for v in base)
    column = Image.new("RGB", (1, 2), top)
    column.putpixel((0, 1), bottom)
    return column.resize((side, side), Image.BILINEAR)


def random_scene(rng: random.Random, n_objects: int) -> dict:
    objects = []
    for i in range(n_objects):
        if i > 1 and rng.random() < 0.5:  # a copy of an earlier small object: "two small blue triangles"
            obj = dict(objects[-1])
        else:
            obj = {"shape": rng.choice(SHAPES), "color": rng.choice(list(COLORS)),
                   "size": rng.choice(MAIN_SIZES if i == 0 else OTHER_SIZES), "texture": rng.choice(TEXTURES)}
        margin = SIZES[obj["size"]] + 0.02  # the whole object inside the image
        obj["x"], obj["y"] = rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin)
        objects.append(obj)
    objects.sort(key=lambda o: -SIZES[o["size"]])  # the main object is the largest (drawn last)
    return {"objects": objects, "background": rng.choice(list(BACKGROUNDS)), "verb": rng.choice(VERBS)}


def render(scene: dict, size: int, rng: random.Random) -> Image.Image:
    side = size * SUPERSAMPLE
    img = _background(side, scene["background"], rng)
    for obj in reversed(scene["objects"]):
        mask = Image.new("L", (side, side), 0)
        r = SIZES[obj["size"]] * side
        cx, cy = obj["x"] * side, obj["y"] * side
        draw = ImageDraw.Draw(mask)
        if obj["shape"] == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        else:
            draw.polygon(_polygon(obj["shape"], cx, cy, r), fill=255)
        img.paste(_fill(side, obj["texture"], COLORS[obj["color"]], rng), (0, 0), mask)
    return img.reduce(SUPERSAMPLE)


def _noun(obj: dict, count: int) -> str:
    return obj["shape"] + ("es" if obj["shape"] == "cross" and count > 1 else "s" if count > 1 else "")


def _phrase(obj: dict, count: int, texture: bool) -> str:
    words = [obj["size"], obj["color"]] + ([obj["texture"]] if texture and obj["texture"] != "plain" else [])
    return " ".join([NUMBERS.get(count, "a")] + words + [_noun(obj, count)])


def _main_phrase(obj: dict, count: int) -> str:
    """Colour and shape first, the rest in brackets: "a red star (large, striped)"."""
    details = [obj["size"]] + ([obj["texture"]] if obj["texture"] != "plain" else [])
    article = NUMBERS.get(count, "an" if obj["color"][0] in "aeiou" else "a")
    return f"{article} {obj['color']} {_noun(obj, count)} ({', '.join(details)})"


def caption(scene: dict) -> str:
    """5-25 words: the main object, then the others ("and"-joined); identical ones counted."""
    groups = []  # identical objects are counted together
    for obj in scene["objects"]:
        ident = (obj["shape"], obj["color"], obj["size"], obj["texture"])
        for g in groups:
            if g[0] == ident:
                g[2] += 1
                break
        else:
            groups.append([ident, obj, 1])
    main = groups[0]
    words = [_main_phrase(main[1], main[2]), scene["verb"][main[2] > 1]]
    others = [_phrase(g[1], g[2], texture=True) for g in groups[1:]]
    if others:
        words += ["next to", " and ".join(others)]
    return " ".join(words)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_demo(out_dir, seed: int = 0, n_train: int = 20000, n_eval: int = 1200, image_size: int = 64,
               shard_size: int = 2000) -> dict:
    """Write OUT/train (captioned scenes) and OUT/eval (one object each, labelled, with
    classnames.txt and templates.txt) as webdataset shards. Returns the two manifests."""
    out = Path(out_dir)
    rng = random.Random(seed)
    with ShardSink(out / "train", maxcount=shard_size) as sink:
        for i in range(n_train):
            scene = random_scene(rng, rng.choice(N_OBJECTS))
            sink.write({"__key__": f"train{i:07d}", "jpg": _jpeg(render(scene, image_size, rng)), "txt": caption(scene)})
    names = classnames()
    with ShardSink(out / "eval", maxcount=shard_size) as sink:
        for i in range(n_eval):
            scene = random_scene(rng, 1)
            obj = scene["objects"][0]
            label = SHAPES.index(obj["shape"]) * len(COLORS) + list(COLORS).index(obj["color"])
            meta = {"shape": obj["shape"], "color": obj["color"], "classname": names[label]}
            sink.write({"__key__": f"eval{i:07d}", "jpg": _jpeg(render(scene, image_size, rng)),
                        "txt": caption(scene), "cls": label, "json": meta})
    (out / "eval" / "classnames.txt").write_text("\n".join(names) + "\n")
    (out / "eval" / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return {split: json.loads((out / split / "manifest.json").read_text()) for split in ("train", "eval")}
