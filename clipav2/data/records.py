"""Turning a raw record's bytes into a checked image header and caption. Every way a record
can be bad raises `BadRecord(reason)`, which the stream counts and skips."""
from __future__ import annotations

import io
import math
import unicodedata
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipav2.data.shards import OVERSIZED

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Deliberate limits: a 1x1 pixel carries nothing, and a 50 MP header is a decompression bomb
# (or a scan) we refuse to decode in a training worker. PIL's own limit (89 MP warns, 179 MP
# raises) is looser; ours is checked on the header, before any pixel is decoded.
MIN_SIDE = 8
MAX_PIXELS = 50_000_000
# What of a caption reaches the tokenizer: CLIPA keeps a few dozen tokens, and 4,096 characters are
# several hundred words; a longer caption (up to the 1 MiB member limit) is cut here, so no tokenizer
# ever sees megabytes of text.
MAX_CAPTION_CHARS = 4096

REASONS = (
    "missing_image",  # a record with no jpg/png/webp member
    "not_an_image",  # bytes PIL does not recognise as an image
    "corrupt_image",  # recognised but fails to decode (truncated, broken data)
    "image_too_small",  # a side below MIN_SIDE
    "image_too_large",  # more than MAX_PIXELS (decompression-bomb limit)
    "missing_caption",  # no txt member
    "empty_caption",  # nothing visible: whitespace, control characters, NUL, zero-width spaces
    "bad_caption_encoding",  # not UTF-8
    "truncated_tar",  # a shard that ends mid-record (counted once per shard)
    "unreadable_shard",  # a shard that cannot be opened
    "duplicate_key",  # a record whose key repeats the one just before it (dropped, not merged)
    "member_too_large",  # a member over its read limit (clipav2.data.shards.member_limit): never read
    "unsafe_key",  # a key that would make a member name absolute or climb out with '..' (shard writer)
)


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_members(record: dict) -> None:
    if OVERSIZED in record:
        raise BadRecord("member_too_large", f"members {record[OVERSIZED]}")


def image_bytes(record: dict) -> bytes:
    _check_members(record)
    for ext in IMAGE_EXTS:
        if ext in record:
            return record[ext]
    raise BadRecord("missing_image", f"members {sorted(record)}")


def visible(text: str) -> bool:
    """Does `text` hold one character that is not a control, format (zero-width space, BOM),
    separator or combining mark? NUL-only or zero-width-only captions tokenize to nothing."""
    return any(unicodedata.category(c)[0] not in "CZM" and not c.isspace() for c in text)


def caption(record: dict) -> str:
    """The record's caption, cut to MAX_CAPTION_CHARS."""
    _check_members(record)
    if "txt" not in record:
        raise BadRecord("missing_caption")
    try:
        text = record["txt"].decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRecord("bad_caption_encoding", str(e)) from None
    text = text.strip()[:MAX_CAPTION_CHARS]
    if not visible(text):
        raise BadRecord("empty_caption", f"{len(text)} characters, none visible")
    return text


def open_image(data: bytes) -> Image.Image:
    """Parse the header only, checking the size limits (no pixel is decoded yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadRecord("image_too_large", str(e)) from None
    except UnidentifiedImageError:
        raise BadRecord("not_an_image", f"{len(data)} bytes starting {data[:8]!r}") from None
    except Exception as e:  # noqa: BLE001 - a broken header of a known format
        raise BadRecord("corrupt_image", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise BadRecord("image_too_small", f"{w}x{h}")
    if w * h > MAX_PIXELS:
        raise BadRecord("image_too_large", f"{w}x{h}")
    if img.format == "JPEG" and 8 * len(data) < math.ceil(w / 8) * math.ceil(h / 8):
        # Huffman coding spends at least one bit on every 8x8 block (its DC code), so fewer bits than
        # blocks means the scan ends early: libjpeg would pad the rest with grey and only warn
        raise BadRecord("corrupt_image", f"truncated: {len(data)} bytes cannot hold a {w}x{h} JPEG")
    return img


def load_rgb(img: Image.Image) -> Image.Image:
    """Decode the pixels (after any `draft`) as RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette-with-transparency and EXIF chatter
            img.load()
            return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any decoder failure means a corrupt file
        raise BadRecord("corrupt_image", f"{type(e).__name__}: {e}") from None


WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit PNGs decode as I;16 (older PIL: I)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB. PIL's own convert clips wide integer grey to 255 (a 16-bit PNG
    came out all white), so 16/32-bit grey is scaled here (0..65535 -> 0..255, rounded) and float
    grey read as 0..1; premultiplied La goes through LA; every other mode PIL converts itself."""
    if img.mode == "RGB":
        return img
    if img.mode in WIDE_GREY or img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = a * 255 if img.mode == "F" else a / 257
        return Image.fromarray(np.rint(np.clip(a, 0, 255)).astype(np.uint8), "L").convert("RGB")
    if img.mode == "La":
        img = img.convert("LA")
    return img.convert("RGB")
