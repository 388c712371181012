"""Stage image transforms, from encoded bytes to a uint8 (3, S, S) tensor.

Training: random-resized crop (torchvision's sampling rule) + colour jitter + grayscale. The
crop box is drawn on the stored image's full-resolution coordinates; with `fast_decode` a JPEG is
then decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (PIL `draft`) as long as the crop
still covers at least S x S decoded pixels, and the box is divided by the same factor, so the
crop's field of view is unchanged: only the decoded resolution is lower. The crop and resize are
one PIL `resize(box=...)` (bilinear, antialiased when shrinking).

Evaluation (`EvalTransform`): resize the short side + centre crop, or a direct resize, as the
zero-shot protocol does it (docs/eval.md): `clipa` as big_vision's `resize_small` / `central_crop`
/ `resize` ops (bilinear, antialiased: PIL's bilinear filter widens with the scale factor as
tf.image.resize's antialias does; sizes rounded half-to-even in float32, the crop offset floored),
`open_clip` as open_clip's eval transform (torchvision bicubic short side + centre crop).
Normalisation (ImageNet mean/std) happens later, on the device: `normalize`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from clipav2.data.records import load_rgb, open_image

INTERPOLATIONS = ("bilinear", "bicubic")  # of the training crop: JAX's inception crop | open_clip's
EVAL_KINDS = ("center_crop", "resize")  # stages[].eval_transform

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DRAFT_SCALES = (8, 4, 2)


_NORMALIZE: dict = {}  # device -> (mean, std): built once, so the step copies nothing host->device


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device not in _NORMALIZE:
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255
        _NORMALIZE[device] = (mean.to(device), std.to(device))
    return _NORMALIZE[device]


def _functional():
    """torchvision.transforms.functional, imported on first use: importing torchvision costs over a
    second (it pulls torch._dynamo), which config checks and `clipav2 plan` need not pay."""
    import torchvision.transforms.functional as TF

    return TF


def normalize(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> ImageNet-normalised float, on the images' device."""
    mean, std = _mean_std(images.device)
    return ((images.float() - mean) / std).to(dtype)


def to_tensor_uint8(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1)


def draft(img: Image.Image, box, min_side: int):
    """Ask libjpeg for the smallest 1/s scale (s in 8, 4, 2) at which the crop `box` is still at
    least `min_side` pixels on its short side; return the image and the box in its coordinates."""
    if img.format != "JPEG":
        return img, box
    crop_short = min(box[2] - box[0], box[3] - box[1])
    scale = next((s for s in DRAFT_SCALES if crop_short / s >= min_side), 1)
    if scale == 1:
        return img, box
    width = img.size[0]
    img.draft("RGB", (img.size[0] // scale, img.size[1] // scale))
    actual = round(width / img.size[0])  # libjpeg's output is ceil(W / s): this recovers s
    return img, tuple(v / actual for v in box)


def random_resized_crop_box(width: int, height: int, scale, ratio, rng: random.Random):
    """torchvision's RandomResizedCrop.get_params with a `random.Random`: (left, top, right, bottom)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return (left, top, left + w, top + h)
    in_ratio = width / height  # fallback: the central crop of the allowed aspect range
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return (left, top, left + w, top + h)


def center_square_box(width: int, height: int):
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


@dataclass
class TrainTransform:
    size: int
    scale: tuple = (0.40, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    random_resized_crop: bool = True  # off: the central square
    color_jitter: tuple = (0.32, 0.32, 0.32, 0.08)  # brightness, contrast, saturation, hue
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    hflip_p: float = 0.0
    fast_decode: bool = True
    interpolation: str = "bilinear"  # of the crop's resize: bilinear (JAX) | bicubic (open_clip)

    @classmethod
    def from_stage(cls, stage, fast_decode: bool = True) -> "TrainTransform":
        a = stage.augment
        return cls(stage.image_size, tuple(a.crop_scale), tuple(a.crop_ratio), a.random_resized_crop,
                   tuple(a.color_jitter), a.color_jitter_p, a.grayscale_p, a.hflip_p, fast_decode,
                   a.crop_interpolation)

    def __call__(self, data: bytes, rng: random.Random) -> torch.Tensor:
        """Encoded image bytes -> uint8 (3, size, size). Raises BadRecord for bad images."""
        img = open_image(data)
        if self.random_resized_crop:
            box = random_resized_crop_box(*img.size, self.scale, self.ratio, rng)
        else:
            box = center_square_box(*img.size)
        if self.fast_decode:
            img, box = draft(img, box, self.size)
        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        img = load_rgb(img).resize((self.size, self.size), resample, box=box)
        return to_tensor_uint8(self.photometric(img, rng))

    def photometric(self, img: Image.Image, rng: random.Random) -> Image.Image:
        """torchvision's ColorJitter (random order, factors around 1) with p, then RandomGrayscale."""
        TF = _functional()
        if any(self.color_jitter) and rng.random() < self.color_jitter_p:
            b, c, s, h = self.color_jitter
            ops = [
                (TF.adjust_brightness, rng.uniform(max(0.0, 1 - b), 1 + b), b),
                (TF.adjust_contrast, rng.uniform(max(0.0, 1 - c), 1 + c), c),
                (TF.adjust_saturation, rng.uniform(max(0.0, 1 - s), 1 + s), s),
                (TF.adjust_hue, rng.uniform(-h, h), h),
            ]
            for i in rng.sample(range(4), 4):
                fn, factor, enabled = ops[i]
                if enabled:
                    img = fn(img, factor)
        if self.grayscale_p and rng.random() < self.grayscale_p:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if self.hflip_p and rng.random() < self.hflip_p:
            img = TF.hflip(img)
        return img


def clipa_short_side(width: int, height: int, size: int) -> tuple[int, int]:
    """big_vision's resize_small: both sides scaled by size / short side in float32, rounded half to even."""
    ratio = np.float32(size) / np.float32(min(width, height))
    return int(np.round(np.float32(width) * ratio)), int(np.round(np.float32(height) * ratio))


PROTOCOLS = ("clipa", "open_clip")  # eval.protocol: how an evaluation resizes (and prompts, clipav2.eval.protocol)


@dataclass
class EvalTransform:
    size: int
    kind: str = "center_crop"  # center_crop: short side to size, then centre crop | resize: to size x size
    fast_decode: bool = True
    protocol: str = "clipa"  # clipa: bilinear, antialiased (big_vision's ops) | open_clip: bicubic (torchvision)

    def __post_init__(self):
        if self.kind not in EVAL_KINDS:
            raise ValueError(f"eval transform {self.kind!r} is not one of {', '.join(EVAL_KINDS)}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"eval protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}")

    def __call__(self, data: bytes) -> torch.Tensor:
        img = open_image(data)
        if self.fast_decode:
            side = min(img.size)  # both kinds need the short side to stay >= size
            img, _ = draft(img, (0, 0, side, side), self.size)
        img = load_rgb(img)
        if self.protocol == "open_clip":
            TF = _functional()
            img = TF.center_crop(TF.resize(img, self.size, TF.InterpolationMode.BICUBIC), self.size)
        elif self.kind == "center_crop":
            img = img.resize(clipa_short_side(*img.size, self.size), Image.BILINEAR)
            left, top = (img.size[0] - self.size) // 2, (img.size[1] - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        else:
            img = img.resize((self.size, self.size), Image.BILINEAR)
        return to_tensor_uint8(img)
