"""Image token-length reduction: which patch tokens a training step keeps. The registry
`REDUCTIONS` (name -> `ImageReduction`: the kept count, the selection, the check of its
parameters, a one-line description) is the one list the config, the plan, the step, the bench and
the stage header read; adding a strategy is adding one entry.

    resize  no masking here: the stage trains at a lower image size (the model recomputes its
            position embedding); the selection returns None
    random  a random subset of floor(N (1 - ratio)) patches per sample (at least 1)
    grid    one patch in each window x window cell, at one random offset per sample
            (window 2 keeps 25%: the paper's 75% reduction); `ratio` plays no part
    block   one contiguous, near-square block of floor(N (1 - ratio)) patches at a random place
            per sample: rows of `bw` patches, the last row left-aligned and possibly shorter

Indices are row-major over the (H, W) patch grid, class token excluded (the model always keeps
it), sorted ascending, and the same count K for every sample so the batch stays one dense
(B, K) tensor. Everything is drawn and built on `device` with batched ops: no per-sample loop.
Parameter errors name the stage's config keys: image_reduction, image_mask_ratio, grid_window.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch


def _kept_fraction(n_patches: int, ratio: float, window: int) -> int:
    return max(1, math.floor(n_patches * (1 - ratio) + 1e-9))  # + 1e-9: 100 * (1 - 0.7) is 29.999..


def _check_window(grid_hw: tuple[int, int], ratio: float, window: int) -> None:
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"grid_window: {window!r} must be a positive integer")
    h, w = grid_hw
    if h % window or w % window:
        raise ValueError(f"grid_window: {window} does not divide the {h}x{w} patch grid")


def _check_no_ratio(grid_hw: tuple[int, int], ratio: float, window: int) -> None:
    if ratio:
        raise ValueError("image_mask_ratio: must be 0 with image_reduction resize (use random, grid or block)")


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


def _random(grid_hw, batch, ratio, window, generator, device):
    n = grid_hw[0] * grid_hw[1]
    keep = _kept_fraction(n, ratio, window)
    return _rand((batch, n), generator, device).argsort(dim=1)[:, :keep].sort(dim=1).values


def _grid(grid_hw, batch, ratio, window, generator, device):
    h, w = grid_hw
    rows = torch.arange(0, h, window, device=device)
    cols = torch.arange(0, w, window, device=device)
    base = (rows[:, None] * w + cols[None, :]).reshape(-1)  # top-left patch of every window
    offset = _rand_int(window, (batch, 2), generator, device)  # (dy, dx) per sample
    return base[None, :] + (offset[:, 0] * w + offset[:, 1])[:, None]


def _block(grid_hw, batch, ratio, window, generator, device):
    h, w = grid_hw
    keep = _kept_fraction(h * w, ratio, window)
    rows, cols = block_shape(grid_hw, keep)
    r = torch.arange(keep, device=device)
    shape = (r // cols) * w + r % cols  # the block's patches, row-major, at the top-left corner
    top = _rand_int(h - rows + 1, (batch,), generator, device)
    left = _rand_int(w - cols + 1, (batch,), generator, device)
    return shape[None, :] + (top * w + left)[:, None]


@dataclass(frozen=True)
class ImageReduction:
    kept: Callable[[int, float, int], int]  # (n_patches, ratio, window) -> K
    select: Optional[Callable]  # (grid_hw, batch, ratio, window, generator, device) -> (B, K); None: keep all
    describe: Callable[[float, int], str]  # (ratio, window) -> e.g. "random mask 25%"
    check: Optional[Callable] = None  # (grid_hw, ratio, window) -> None, or ValueError naming the key


REDUCTIONS = {
    "resize": ImageReduction(lambda n, ratio, window: n, None, lambda ratio, window: "all patches", _check_no_ratio),
    "random": ImageReduction(_kept_fraction, _random, lambda ratio, window: f"random mask {ratio:.0%}"),
    "grid": ImageReduction(lambda n, ratio, window: n // (window * window), _grid,
                           lambda ratio, window: f"one per {window}x{window} grid window", _check_window),
    "block": ImageReduction(_kept_fraction, _block, lambda ratio, window: f"block mask {ratio:.0%}"),
}


def get(kind: str) -> ImageReduction:
    if kind not in REDUCTIONS:
        raise ValueError(f"image_reduction: unknown kind {kind!r}; one of {', '.join(REDUCTIONS)}")
    return REDUCTIONS[kind]


def check(kind: str, grid_hw: tuple[int, int], ratio: float = 0.0, window: int = 2) -> ImageReduction:
    """The strategy, after checking its parameters against an (H, W) patch grid."""
    how = get(kind)
    if not 0 <= ratio < 1:
        raise ValueError(f"image_mask_ratio: {ratio} must be in [0, 1)")
    if how.check is not None:
        how.check(grid_hw, ratio, window)
    return how


def kept_on_grid(kind: str, grid_hw: tuple[int, int], ratio: float = 0.0, window: int = 2) -> int:
    """How many patch tokens (class token excluded) a step keeps on an (H, W) patch grid."""
    return check(kind, grid_hw, ratio, window).kept(grid_hw[0] * grid_hw[1], ratio, window)


def kept_tokens(kind: str, n_patches: int, ratio: float = 0.0, window: int = 2) -> int:
    """`kept_on_grid` of `n_patches`, taken as a square grid when it is one (else one row: only
    `grid` looks at the shape)."""
    side = math.isqrt(n_patches)
    return kept_on_grid(kind, (side, side) if side * side == n_patches else (1, n_patches), ratio, window)


def keep_indices(kind: str, grid_hw: tuple[int, int], batch: int, ratio: float = 0.0, window: int = 2,
                 generator: Optional[torch.Generator] = None, device=None) -> Optional[torch.Tensor]:
    """(B, K) LongTensor of kept patch indices per sample, or None for `resize`."""
    how = check(kind, grid_hw, ratio, window)
    h, w = grid_hw
    if h < 1 or w < 1 or batch < 1:
        raise ValueError(f"grid_hw/batch: need a non-empty grid and batch, got {grid_hw} and {batch}")
    if how.select is None:
        return None
    device = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    return how.select(grid_hw, batch, ratio, window, generator, device)
