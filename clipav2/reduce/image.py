"""Image token-length reduction: which patch tokens a training step keeps.

    resize  no masking here: the stage trains at a lower image size (the model recomputes its
            position embedding); `keep_indices` returns None
    random  a random subset of floor(N (1 - ratio)) patches per sample (at least 1)
    grid    one patch in each window x window cell, at one random offset per sample
            (window 2 keeps 25%: the paper's 75% reduction); `ratio` plays no part
    block   one contiguous, near-square block of floor(N (1 - ratio)) patches at a random place
            per sample: rows of `bw` patches, the last row left-aligned and possibly shorter

Indices are row-major over the (H, W) patch grid, class token excluded (the model always keeps
it), sorted ascending, and the same count K for every sample so the batch stays one dense
(B, K) tensor. Everything is drawn and built on `device` with batched ops: no per-sample loop.
"""
import math
from typing import Optional

import torch

KINDS = ("resize", "random", "grid", "block")


def _check(kind: str, ratio: float, window: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    if not 0 <= ratio < 1:
        raise ValueError(f"ratio: {ratio} must be in [0, 1)")
    if kind == "grid" and (not isinstance(window, int) or window < 1):
        raise ValueError(f"window: {window!r} must be a positive integer")


def kept_tokens(kind: str, n_patches: int, ratio: float = 0.0, window: int = 2) -> int:
    """How many patch tokens (class token excluded) a step keeps out of `n_patches`."""
    _check(kind, ratio, window)
    if kind == "resize":
        return n_patches
    if kind == "grid":
        if n_patches % (window * window):
            raise ValueError(f"window: {window} does not divide a grid of {n_patches} patches")
        return n_patches // (window * window)
    return max(1, math.floor(n_patches * (1 - ratio) + 1e-9))  # + 1e-9: 100 * (1 - 0.7) is 29.999..


def block_shape(grid_hw: tuple[int, int], keep: int) -> tuple[int, int]:
    """(rows, cols) of the near-square block holding `keep` patches inside the (H, W) grid."""
    h, w = grid_hw
    cols = min(w, math.ceil(math.sqrt(keep)))
    rows = math.ceil(keep / cols)
    if rows > h:  # a wide, short grid: use every row and widen
        rows = h
        cols = math.ceil(keep / h)
    return rows, cols


def _rand(shape, generator, device) -> torch.Tensor:
    """Uniform [0, 1) drawn on the generator's device (it must match for torch), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device, non_blocking=True)


def _rand_int(high: int, shape, generator, device) -> torch.Tensor:
    """Uniform integers in [0, high)."""
    return (_rand(shape, generator, device) * high).long().clamp_max(high - 1)


def keep_indices(kind: str, grid_hw: tuple[int, int], batch: int, ratio: float = 0.0, window: int = 2,
                 generator: Optional[torch.Generator] = None, device=None) -> Optional[torch.Tensor]:
    """(B, K) LongTensor of kept patch indices per sample, or None for `resize`."""
    _check(kind, ratio, window)
    h, w = grid_hw
    if h < 1 or w < 1 or batch < 1:
        raise ValueError(f"grid_hw/batch: need a non-empty grid and batch, got {grid_hw} and {batch}")
    if kind == "resize":
        return None
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    n = h * w
    if kind == "random":
        keep = kept_tokens(kind, n, ratio)
        return _rand((batch, n), generator, device).argsort(dim=1)[:, :keep].sort(dim=1).values
    if kind == "grid":
        if h % window or w % window:
            raise ValueError(f"window: {window} does not divide the {h}x{w} patch grid")
        rows = torch.arange(0, h, window, device=device)
        cols = torch.arange(0, w, window, device=device)
        base = (rows[:, None] * w + cols[None, :]).reshape(-1)  # top-left patch of every window
        offset = _rand_int(window, (batch, 2), generator, device)  # (dy, dx) per sample
        return base[None, :] + (offset[:, 0] * w + offset[:, 1])[:, None]
    keep = kept_tokens(kind, n, ratio)
    rows, cols = block_shape(grid_hw, keep)
    r = torch.arange(keep, device=device)
    shape = (r // cols) * w + r % cols  # the block's patches, row-major, at the top-left corner
    top = _rand_int(h - rows + 1, (batch,), generator, device)
    left = _rand_int(w - cols + 1, (batch,), generator, device)
    return shape[None, :] + (top * w + left)[:, None]
