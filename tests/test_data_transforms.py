"""Stage transforms against torchvision, and the fast low-resolution decode's field of view."""
import io
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image
from skimage import data as samples

from clipav2.data import EvalTransform, TrainTransform, normalize
from clipav2.data.transforms import clipa_short_side, random_resized_crop_box, to_tensor_uint8


@pytest.fixture(scope="module")
def photo():
    """A real photograph (scikit-image's astronaut, 512 px) as a quality-90 JPEG."""
    buf = io.BytesIO()
    Image.fromarray(samples.astronaut()).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("size", [32, 84, 224])
def test_train_transform_sizes_and_range(photo, size):
    out = TrainTransform(size)(photo, random.Random(0))
    assert out.shape == (3, size, size) and out.dtype == torch.uint8
    assert 0 <= out.min() < out.max() <= 255


def test_crop_box_follows_torchvision_rule():
    rng = random.Random(0)
    for _ in range(300):
        left, top, right, bottom = random_resized_crop_box(640, 360, (0.4, 1.0), (3 / 4, 4 / 3), rng)
        w, h = right - left, bottom - top
        assert 0 <= left and right <= 640 and 0 <= top and bottom <= 360
        assert 0.4 - 0.01 <= w * h / (640 * 360) <= 1.0
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])  # JAX | open_clip (CLIPA v1)
def test_crop_matches_torchvision_resized_crop(photo, interpolation):
    """Without fast decode and jitter, our crop is torchvision's resized_crop of the same box (PIL
    samples beyond the box edge where torchvision clamps, so only the border pixels may differ)."""
    t = TrainTransform(84, fast_decode=False, color_jitter=(0, 0, 0, 0), grayscale_p=0, interpolation=interpolation)
    ours = t(photo, random.Random(5))
    left, top, right, bottom = random_resized_crop_box(512, 512, t.scale, t.ratio, random.Random(5))
    img = Image.open(io.BytesIO(photo)).convert("RGB")
    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    ref = to_tensor_uint8(TF.resized_crop(img, top, left, bottom - top, right - left, [84, 84], mode, antialias=True))
    diff = (ours.int() - ref.int()).abs()
    assert diff[:, 2:-2, 2:-2].float().mean() < 0.5 and diff.float().mean() < 1.5


@pytest.mark.parametrize("size", [32, 84])
def test_fast_decode_keeps_the_field_of_view(photo, size):
    """A draft-decoded crop looks like the full-resolution crop of the same box, and much less
    like a box shifted by a tenth of its width (what a wrong coordinate mapping would give)."""
    kw = {"color_jitter": (0, 0, 0, 0), "grayscale_p": 0}
    for seed in range(5):
        fast = TrainTransform(size, fast_decode=True, **kw)(photo, random.Random(seed)).float()
        full = TrainTransform(size, fast_decode=False, **kw)(photo, random.Random(seed)).float()
        shifted = TrainTransform(size, fast_decode=False, scale=(0.4, 1.0), **kw)
        left, top, right, bottom = random_resized_crop_box(512, 512, shifted.scale, shifted.ratio, random.Random(seed))
        dx = max(1, (right - left) // 10)
        dx = -dx if left >= dx else dx if right + dx <= 512 else 0
        if dx == 0:
            continue  # the crop spans the whole width: nothing to shift
        img = Image.open(io.BytesIO(photo)).convert("RGB")
        moved = to_tensor_uint8(img.resize((size, size), Image.BILINEAR, box=(left + dx, top, right + dx, bottom))).float()
        assert (fast - full).abs().mean() < 4
        assert (fast - full).abs().mean() < 0.2 * (moved - full).abs().mean()


def test_draft_really_decodes_less(photo):
    from clipav2.data.records import open_image
    from clipav2.data.transforms import draft

    img, box = draft(open_image(photo), (0, 0, 400, 400), 84)
    img.load()
    assert img.size == (128, 128) and box == (0, 0, 100, 100)  # 1/4 scale still covers 84 px


def test_photometric_statistics(photo):
    """Grayscale at p 0.2 and jitter at p 0.8, as configured; no flip."""
    t = TrainTransform(16, color_jitter=(0.32, 0.32, 0.32, 0.08), color_jitter_p=0.8, grayscale_p=0.2)
    base = TrainTransform(16, color_jitter=(0, 0, 0, 0), grayscale_p=0)
    gray = changed = 0
    n = 400
    for seed in range(n):
        out = t(photo, random.Random(seed))
        gray += bool((out[0] == out[1]).all() and (out[1] == out[2]).all())
        changed += not torch.equal(out, base(photo, random.Random(seed)))
    assert abs(gray / n - 0.2) < 0.06
    assert abs(changed / n - (1 - 0.2 * 0.8)) < 0.06  # unchanged only without jitter and grayscale


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["center_crop", "resize"])
def test_open_clip_protocol_is_open_clips_eval_transform(kind):
    from open_clip.transform import image_transform

    img = Image.fromarray(samples.chelsea())  # 451 x 300: not square
    ops = [t for t in image_transform(96, is_train=False).transforms if not isinstance(t, (T.ToTensor, T.Normalize))]
    ours = EvalTransform(96, kind, fast_decode=False, protocol="open_clip")(_png(img))
    assert ours.shape == (3, 96, 96)
    assert torch.equal(ours, to_tensor_uint8(T.Compose(ops)(img))), "open_clip crops whatever the stage"


def _antialiased_bilinear(img, width, height):
    """torch's own antialiased bilinear (not PIL's code), as tf.image.resize(antialias=True) does it."""
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()
    return F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)[0]


@pytest.mark.parametrize("size", [84, 96, 224, 333])
def test_clipa_protocol_is_big_visions_resize_small_and_central_crop(size):
    img = Image.fromarray(samples.chelsea())  # 451 x 300
    ours = EvalTransform(size, "center_crop", fast_decode=False)(_png(img)).float()
    ratio = np.float32(size) / np.float32(300)  # resize_small: float32, rounded half to even
    width, height = round(float(np.float32(451) * ratio)), round(float(np.float32(300) * ratio))
    top, left = (height - size) // 2, (width - size) // 2  # central_crop: offsets floored
    reference = _antialiased_bilinear(img, width, height)[:, top : top + size, left : left + size]
    assert (ours - reference).abs().max() <= 1.5, "bilinear, antialiased, same box"
    bicubic = to_tensor_uint8(T.Compose([T.Resize(size, T.InterpolationMode.BICUBIC), T.CenterCrop(size)])(img)).float()
    assert (bicubic - reference).abs().max() > 5, "the check tells bicubic apart"


def test_clipa_protocol_fine_tune_stages_resize_directly():
    img = Image.fromarray(samples.chelsea())
    ours = EvalTransform(224, "resize", fast_decode=False)(_png(img)).float()
    assert (ours - _antialiased_bilinear(img, 224, 224)).abs().max() <= 1.5


def test_clipa_sizes_round_half_to_even():
    assert clipa_short_side(5, 2, 1) == (2, 1)  # 2.5 -> 2
    assert clipa_short_side(7, 2, 1) == (4, 1)  # 3.5 -> 4
    assert clipa_short_side(451, 300, 84) == (126, 84)


def test_normalize_matches_torchvision():
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    ref = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(images.float() / 255)
    assert torch.allclose(normalize(images), ref, atol=1e-5)
    assert normalize(images, torch.bfloat16).dtype == torch.bfloat16
    assert math.isclose(normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8))[0].item(), (1 - 0.485) / 0.229, rel_tol=1e-5)
