"""Position embeddings: the fixed JAX 2-D sin-cos table and the resampling of learned tables."""
import torch
import torch.nn.functional as F


def sincos_2d(grid: int, width: int, device=None) -> torch.Tensor:
    """(1 + grid*grid, width) table: a zero row for the class token, then the JAX / big_vision
    `posemb_sincos_2d` rows in row-major patch order. Frequencies divide by D/4 - 1 (JAX), not
    D/4 (open_clip's own sin-cos), so the last frequency is exactly 1/10000."""
    return _sincos_table(grid, width, divide_by_quarter_minus_one=True, device=device)


def sincos_2d_open_clip(grid: int, width: int, device=None) -> torch.Tensor:
    """(1 + grid*grid, width) table of open_clip / MAE `get_2d_sincos_pos_embed` (CLIPA v1's
    `--pos-embed sin_cos_2d`): a zero class row, then per patch [sin, cos] of the column and
    [sin, cos] of the row, frequencies 10000^(-k / (D/4)) (divided by D/4, not D/4 - 1)."""
    return _sincos_table(grid, width, divide_by_quarter_minus_one=False, device=device)


def _sincos_table(grid: int, width: int, divide_by_quarter_minus_one: bool, device) -> torch.Tensor:
    """Both forms share the layout [sin x, cos x, sin y, cos y] (x: column, y: row) and differ
    only in the frequency divisor."""
    if width % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {width}")
    quarter = width // 4
    divisor = quarter - 1 if divide_by_quarter_minus_one else quarter
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64, device=device) / divisor)
    y, x = torch.meshgrid(
        torch.arange(grid, dtype=torch.float64, device=device),
        torch.arange(grid, dtype=torch.float64, device=device),
        indexing="ij",
    )
    x = x.flatten()[:, None] * omega
    y = y.flatten()[:, None] * omega
    table = torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)
    return torch.cat([table.new_zeros(1, width), table]).float()


def resample_grid(table: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a learned (1 + g*g, D) image table to (1 + grid*grid, D): the class row is kept, the
    patch rows are resampled bicubically (open_clip's `resize_pos_embed`: antialiased,
    align_corners=False)."""
    cls, patches = table[:1], table[1:]
    old = int(round(patches.shape[0] ** 0.5))
    if old * old != patches.shape[0]:
        raise ValueError(f"image position table has {patches.shape[0]} patch rows, not a square grid")
    if old == grid:
        return table
    img = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    patches = img.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(table.dtype)
    return torch.cat([cls, patches])


def resample_1d(table: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a (L, D) text table to (length, D) by linear interpolation with half-pixel centres,
    antialiased when shrinking (jax.image.resize's "linear", used between CLIPA stages)."""
    if table.shape[0] == length:
        return table
    img = table.t()[None, :, None, :].float()  # (1, D, 1, L): bilinear over a 1-pixel-high image
    img = F.interpolate(img, size=(1, length), mode="bilinear", antialias=True, align_corners=False)
    # contiguous: DeepSpeed broadcasts parameters through flat byte views (stride(-1) must be 1)
    return img[0, :, 0, :].t().contiguous().to(table.dtype)
