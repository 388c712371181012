"""Image token selection: kept counts, geometry of grid and block (square and non-square grids),
determinism, errors, and a model that really runs its blocks on the kept tokens only."""
import math

import pytest
import torch

from clipav2.reduce.image import block_shape, keep_indices, kept_tokens

GRIDS = [(4, 4), (8, 8), (4, 6), (6, 4), (2, 8), (1, 10), (14, 14), (16, 12)]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["random", "block"])
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.7, 0.75, 0.9, 0.99])
def test_random_and_block_keep_floor_of_the_unmasked_share(kind, grid, ratio):
    n = grid[0] * grid[1]
    keep = keep_indices(kind, grid, 5, ratio, generator=_gen(0))
    expected = max(1, int(n * (1 - ratio) + 1e-9))
    assert keep.shape == (5, expected) == (5, kept_tokens(kind, n, ratio))
    assert keep.dtype == torch.long
    assert (keep[:, 1:] > keep[:, :-1]).all(), "indices are strictly increasing: order kept, no repeats"
    assert keep.min() >= 0 and keep.max() < n


def test_kept_token_counts_closed_form():
    assert kept_tokens("resize", 256) == 256
    assert kept_tokens("random", 196, 0.5) == 98
    assert kept_tokens("random", 100, 0.7) == 30  # floating point 100 * 0.3 = 29.999..
    assert kept_tokens("block", 196, 0.75) == 49
    assert kept_tokens("random", 4, 0.9) == 1  # at least one patch
    assert kept_tokens("grid", 256, window=2) == 64  # the paper's 75% reduction
    assert kept_tokens("grid", 144, window=3) == 16


@pytest.mark.parametrize("kind", ["random", "grid", "block"])
def test_fixed_seed_repeats_and_seeds_differ(kind):
    a = keep_indices(kind, (8, 6), 32, 0.5, 2, _gen(1))
    b = keep_indices(kind, (8, 6), 32, 0.5, 2, _gen(1))
    c = keep_indices(kind, (8, 6), 32, 0.5, 2, _gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) > 1, "samples of one batch draw independently"


def test_random_keeps_every_patch_equally_often():
    keep = keep_indices("random", (4, 6), 4000, 0.75, generator=_gen(3))  # 6 of 24 per sample
    freq = torch.bincount(keep.flatten(), minlength=24).float() / 4000
    assert torch.allclose(freq, torch.full((24,), 0.25), atol=0.03)


@pytest.mark.parametrize("grid, window", [((8, 8), 2), ((4, 6), 2), ((6, 9), 3), ((2, 8), 2), ((4, 4), 1)])
def test_grid_keeps_one_patch_per_window_at_one_offset_per_sample(grid, window):
    h, w = grid
    keep = keep_indices("grid", grid, 64, 0.0, window, _gen(4))
    assert keep.shape == (64, h * w // window**2)
    rows, cols = keep // w, keep % w
    for r, c in zip(rows, cols):
        cells = (r // window) * (w // window) + c // window
        assert sorted(cells.tolist()) == list(range(h * w // window**2)), "exactly one per window"
        assert len(set((r % window).tolist())) == 1 and len(set((c % window).tolist())) == 1, "one offset"
    offsets = {(int(r[0] % window), int(c[0] % window)) for r, c in zip(rows, cols)}
    assert len(offsets) == window**2, "every offset occurs over 64 samples"


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75, 0.9])
def test_block_is_one_contiguous_near_square_block(grid, ratio):
    h, w = grid
    keep = keep_indices("block", grid, 48, ratio, generator=_gen(5))
    k = keep.shape[1]
    bh, bw = block_shape(grid, k)
    assert bh <= h and bw <= w and bh * bw >= k > (bh - 1) * bw
    if math.ceil(math.sqrt(k)) <= min(h, w):  # room for a square: near-square it must be
        assert 0 <= bw - bh <= 1
    corners = set()
    for row in keep:
        r, c = row // w, row % w
        top, left = int(r.min()), int(c.min())
        corners.add((top, left))
        expected = [(top + i // bw) * w + left + i % bw for i in range(k)]  # full rows, last one left-aligned
        assert row.tolist() == expected
    if (h - bh + 1) * (w - bw + 1) > 1:
        assert len(corners) > 1, "the block moves between samples"


def test_resize_keeps_everything():
    assert keep_indices("resize", (14, 14), 8, 0.0, generator=_gen(0)) is None


def test_batched_on_the_device_without_host_syncs():
    # The meta device has no data: any .item()/.tolist()/per-sample Python branching would fail.
    for kind in ("random", "grid", "block"):
        keep = keep_indices(kind, (16, 16), 1024, 0.5, 2, None, device="meta")
        assert keep.device.type == "meta" and keep.shape[0] == 1024


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_ratio_outside_unit_interval_is_an_error(ratio):
    with pytest.raises(ValueError, match="ratio"):
        keep_indices("random", (4, 4), 2, ratio)
    with pytest.raises(ValueError, match="ratio"):
        kept_tokens("block", 16, ratio)


def test_window_not_dividing_the_grid_is_an_error():
    with pytest.raises(ValueError, match="window: 3 does not divide the 4x6"):
        keep_indices("grid", (4, 6), 2, window=3)
    with pytest.raises(ValueError, match="window"):
        keep_indices("grid", (4, 4), 2, window=0)
    with pytest.raises(ValueError, match="window"):
        kept_tokens("grid", 36, window=4)
    with pytest.raises(ValueError, match="kind"):
        keep_indices("checkerboard", (4, 4), 2)


# ---------------------------------------------------------------- the model runs on kept tokens


def _block_flops(depth, tokens, width, mlp):  # closed form, written out independently of flops.py
    return depth * (tokens * 2 * (3 * width * width + width * width + 2 * width * mlp) + 2 * 2 * tokens * tokens * width)


@pytest.mark.parametrize("kind, ratio", [("random", 0.5), ("grid", 0.0), ("block", 0.75), ("random", 0.25)])
def test_model_blocks_run_on_the_kept_share_of_patches(kind, ratio):
    from clipav2.models import create_model
    from clipav2.models.flops import forward_flops

    torch.manual_seed(0)
    model = create_model("demo").eval()  # 64 px / patch 8: an 8x8 grid
    v = model.arch.vision
    n = v.grid**2
    seen = []
    for block in model.visual.blocks:
        block.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    images = torch.randn(4, 3, v.image_size, v.image_size)
    keep = keep_indices(kind, (v.grid, v.grid), 4, ratio, 2, _gen(0))
    with torch.no_grad():
        emb = model.encode_image(images, keep=keep)
    kept = keep.shape[1]
    expected = n // 4 if kind == "grid" else int(n * (1 - ratio))
    assert kept == expected
    assert seen == [1 + kept] * v.depth, "every block sees the class token plus the kept patches only"
    assert emb.shape == (4, model.arch.embed_dim) and torch.isfinite(emb).all()
    saved = forward_flops(model.arch) - forward_flops(model.arch, kept_image_tokens=kept)
    assert saved == _block_flops(v.depth, n + 1, v.width, v.mlp) - _block_flops(v.depth, kept + 1, v.width, v.mlp)
    assert saved > 0
