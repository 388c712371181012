"""Every PIL mode decodes to the right 8-bit RGB: wide grey (16-bit PNGs) is scaled, not clipped
to white; the rest against closed forms (grey, palette, alpha dropped) or, for the colour-space
modes, PIL's own conversion."""
import io

import numpy as np
import pytest
from PIL import Image

from clipav2.data.records import load_rgb, open_image, to_rgb

VALUES = np.array([[0, 1000, 32768, 65535], [257, 12345, 50000, 65280]] * 4, dtype=np.int64).repeat(2, axis=1)  # 8x8


def _rgb(img):
    out = to_rgb(img)
    assert out.mode == "RGB" and out.size == img.size
    return np.asarray(out).astype(np.int64)


RAW = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I;16N": "=u2", "I": "=i4"}


@pytest.mark.parametrize("mode", list(RAW))
def test_wide_grey_is_scaled_to_8_bits(mode):
    img = Image.frombytes(mode, (8, 8), VALUES.astype(RAW[mode]).tobytes())
    assert img.mode == mode
    expected = np.rint(VALUES / 257).astype(np.int64)
    got = _rgb(img)
    for c in range(3):
        assert (got[..., c] == expected).all(), mode


def test_a_16_bit_png_file_decodes_to_its_grey_levels():
    buf = io.BytesIO()
    Image.frombytes("I;16", (8, 8), VALUES.astype("<u2").tobytes()).save(buf, "PNG")
    img = open_image(buf.getvalue())
    assert img.mode.startswith("I")
    got = np.asarray(load_rgb(img)).astype(np.int64)
    assert (got[..., 0] == np.rint(VALUES / 257)).all()
    assert got.mean() < 200  # not the all-white image PIL's clipping convert gives


def test_float_grey_is_read_as_0_to_1():
    a = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    got = _rgb(Image.frombytes("F", (8, 8), a.tobytes()))
    assert (got[..., 1] == np.rint(a * 255)).all()


def test_grey_palette_and_alpha_modes():
    grey = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    assert (_rgb(Image.fromarray(grey, "L")) == grey[..., None]).all()
    assert set(np.unique(_rgb(Image.fromarray(grey, "L").convert("1")))) <= {0, 255}
    la = Image.merge("LA", [Image.fromarray(grey, "L"), Image.new("L", (8, 8), 77)])
    assert (_rgb(la) == grey[..., None]).all()
    assert (_rgb(la.convert("La")) == _rgb(la.convert("La").convert("LA"))).all()
    rgb = np.stack([grey, 255 - grey, grey // 2], axis=-1)
    rgba = Image.merge("RGBA", [*Image.fromarray(rgb, "RGB").split(), Image.new("L", (8, 8), 10)])
    assert (_rgb(rgba) == rgb).all()  # alpha dropped, colour kept (open_clip's convert("RGB"))
    assert (_rgb(Image.fromarray(rgb, "RGB").convert("RGBX")) == rgb).all()
    p = Image.fromarray(rgb, "RGB").quantize(16)
    palette = np.array(p.getpalette()[: 3 * 16]).reshape(-1, 3)
    assert (_rgb(p) == palette[np.asarray(p)]).all()
    pa = p.convert("PA")
    assert (_rgb(pa) == palette[np.asarray(p)]).all()


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "HSV", "RGBa"])
def test_colour_space_modes_convert_as_pil_does(mode):
    rgb = np.stack([*np.meshgrid(np.arange(8) * 30, np.arange(8) * 20), np.full((8, 8), 90)], axis=-1).astype(np.uint8)
    img = Image.fromarray(rgb, "RGB")
    img = img.convert(mode) if mode not in ("LAB", "HSV") else Image.frombytes(mode, (8, 8), rgb.tobytes())
    assert (_rgb(img) == np.asarray(img.convert("RGB"))).all()


def test_every_mode_pil_knows_converts():
    from PIL import ImageMode

    modes = [m for m in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                         "I", "I;16", "I;16L", "I;16B", "I;16N", "F") if ImageMode.getmode(m)]
    for mode in modes:
        _rgb(Image.new(mode, (8, 8)))
