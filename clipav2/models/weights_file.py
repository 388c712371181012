"""Checks on a weights file before any library parses it, so a bad file is one line naming it
(not a Rust panic or a 20-line unpickler message), and nothing in it can execute code.

safetensors layout: 8 bytes little-endian header length N, N bytes of JSON
({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}), then the data;
offsets count from the end of the header.
"""
from __future__ import annotations

import json
import math
import os
import struct

MAX_HEADER = 100_000_000  # the safetensors library's own limit
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class WeightsFileError(ValueError):
    """A weights file that cannot be used; the message is one line naming the file."""


def check_safetensors(path) -> None:
    """Raise WeightsFileError unless `path` is a well-formed safetensors file (header only)."""
    path = os.fspath(path)
    size = os.path.getsize(path)

    def bad(why):
        return WeightsFileError(f"{path}: not a usable safetensors file: {why}")

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise bad(f"header length {n} does not fit the {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"the header is not JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise bad("__metadata__ is not a mapping of strings")
            continue
        if not isinstance(info, dict) or info.get("dtype") not in ITEMSIZE:
            raise bad(f"tensor {name!r} has no known dtype")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            raise bad(f"tensor {name!r} has data offsets {offsets!r} outside the {data} data bytes")
        if offsets[1] - offsets[0] != math.prod(shape) * ITEMSIZE[info["dtype"]]:
            raise bad(f"tensor {name!r}: offsets {offsets} do not match shape {shape} of {info['dtype']}")


def refused_pickle(path, e: BaseException) -> WeightsFileError:
    """The one-line error for a .pt/.bin torch.load(weights_only=True) refused."""
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    reason = next((x for x in lines if "unsupported" in x.lower() or "WeightsUnpickler" in x), lines[0] if lines else "")
    reason = reason.split(" was not an allowed global")[0].split(" whose module ")[0]
    return WeightsFileError(f"{os.fspath(path)}: not a weights-only torch checkpoint (a pickle of other objects "
                            f"is refused: {reason or type(e).__name__})")
