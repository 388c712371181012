"""The image tower: bias-free patch convolution, class token, position table, optional LayerNorm
before the blocks (open_clip's ln_pre; CLIPA-v2 has none), pre-LN blocks, a pool (CLIPA-v2: the
average of the patch tokens; CLIPA v1: the class token, or clipa_torch's average over all tokens
class token included), LayerNorm, bias-free projection."""
import torch
from torch import nn

from clipav2.models.arch import IMAGE_POOLS, POS_EMBEDS, ClipArch
from clipav2.models.posembed import resample_grid, sincos_2d, sincos_2d_open_clip
from clipav2.models.transformer import make_blocks


_SINCOS = {"sincos": sincos_2d, "sincos_open_clip": sincos_2d_open_clip}


def select_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The token-reduction hook: keep (B, K) patch indices of x (B, N, D) -> (B, K, D)."""
    if keep.dtype != torch.long or keep.ndim != 2 or keep.shape[0] != x.shape[0]:
        raise ValueError(
            f"keep must be a LongTensor of shape (batch={x.shape[0]}, K), got {keep.dtype} {tuple(keep.shape)}"
        )
    return torch.gather(x, 1, keep[:, :, None].expand(-1, -1, x.shape[2]))


class VisionTower(nn.Module):
    def __init__(self, arch: ClipArch):
        super().__init__()
        v = arch.vision
        self.patch_size, self.pos_kind = v.patch_size, v.pos_embed
        self.patch_embed = nn.Conv2d(3, v.width, v.patch_size, v.patch_size, bias=False)
        self.class_token = nn.Parameter(torch.zeros(v.width))
        if v.pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.empty(v.grid**2 + 1, v.width))
        elif v.pos_embed in _SINCOS:  # fixed: a buffer, not a parameter, never saved
            self.register_buffer("pos_embed", torch.empty(v.grid**2 + 1, v.width), persistent=False)
        else:
            raise ValueError(f"pos_embed must be one of {', '.join(POS_EMBEDS)}, got {v.pos_embed!r}")
        if v.pool not in IMAGE_POOLS:
            raise ValueError(f"image pool must be one of {', '.join(IMAGE_POOLS)}, got {v.pool!r}")
        self.pool = v.pool
        self.norm_pre = nn.LayerNorm(v.width, eps=arch.ln_eps) if v.ln_pre else None
        self.image_size = v.image_size
        self.blocks = make_blocks(v.depth, v.width, v.heads, v.mlp, arch.gelu, arch.ln_eps, arch.attention)
        self.norm = nn.LayerNorm(v.width, eps=arch.ln_eps)
        self.head = nn.Linear(v.width, arch.embed_dim, bias=False)
        self.reset_buffers()

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def reset_buffers(self) -> None:
        """Recompute the sin-cos table (after `to_empty` from the meta device, or a size change)."""
        if self.pos_kind in _SINCOS:
            table = _SINCOS[self.pos_kind]
            self.pos_embed = table(self.grid, self.pos_embed.shape[1], self.patch_embed.weight.device)

    def make_pos_embed_learnable(self) -> None:
        """Turn a fixed sin-cos table into a learned one with the same values (CLIPA v1 fine-tunes
        the table it pre-trained with fixed); build the optimizer (and any sharding) after this."""
        if self.pos_kind != "learned":
            self.pos_embed = nn.Parameter(self.pos_embed.detach().clone())
            self.pos_kind = "learned"

    def set_image_size(self, px: int) -> None:
        if px % self.patch_size:
            raise ValueError(f"image size {px} is not a multiple of the patch size {self.patch_size}")
        if px == self.image_size:
            return
        self.image_size = px
        if self.pos_kind in _SINCOS:
            self.reset_buffers()
        else:  # a new Parameter: build the optimizer (and any sharding) after this
            self.pos_embed = nn.Parameter(resample_grid(self.pos_embed.detach(), self.grid))

    def forward(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size,) * 2:
            raise ValueError(
                f"images must be (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}; "
                f"call set_image_size() to change the resolution"
            )
        # The residual stream is in the tower's parameter dtype: fp32 under bf16_autocast (CLIPA's
        # JAX numerics: fp32 activations, bf16 matmuls), bf16 under bf16_params. Autocast returns
        # the patch convolution in bf16, so its output is cast back, as the text tower's embedding
        # (not autocast) already is.
        dtype = self.class_token.dtype
        x = self.patch_embed(images).flatten(2).transpose(1, 2).to(dtype)  # (B, N, D), row-major patches
        pos = self.pos_embed.to(dtype)
        x = x + pos[1:]
        if keep is not None:
            x = select_tokens(x, keep)
        cls = (self.class_token + pos[0]).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1)
        if self.norm_pre is not None:
            x = self.norm_pre(x)
        for block in self.blocks:
            x = block(x)
        if self.pool == "avg":
            pooled = x[:, 1:].mean(dim=1)
        elif self.pool == "tok":
            pooled = x[:, 0]
        else:  # "avg_with_cls": clipa_torch VisionTransformer._global_pool(include_cls=True)
            pooled = x.mean(dim=1)
        return self.head(self.norm(pooled))
