"""The CLIPA text tower: 32,000-row token embedding, learned position table, bidirectional
blocks with no mask at all (padding included), final LayerNorm, `last` pooling (the feature of the
last position, usually a pad), bias-free projection."""
import torch
from torch import nn

from clipav2.models.arch import ClipArch
from clipav2.models.posembed import resample_1d
from clipav2.models.transformer import make_blocks


class TextTower(nn.Module):
    def __init__(self, arch: ClipArch):
        super().__init__()
        t = arch.text
        self.token_embed = nn.Embedding(t.vocab_size, t.width)
        self.pos_embed = nn.Parameter(torch.empty(t.context_length, t.width))
        self.blocks = make_blocks(t.depth, t.width, t.heads, t.mlp, arch.gelu, arch.ln_eps, arch.attention)
        self.norm = nn.LayerNorm(t.width, eps=arch.ln_eps)
        self.head = nn.Linear(t.width, arch.embed_dim, bias=False)

    @property
    def context_length(self) -> int:
        return self.pos_embed.shape[0]

    def set_text_len(self, length: int) -> None:
        if length < 1:
            raise ValueError(f"text length must be >= 1, got {length}")
        if length == self.context_length:
            return
        # a new Parameter: build the optimizer (and any sharding) after this
        self.pos_embed = nn.Parameter(resample_1d(self.pos_embed.detach(), length))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] > self.context_length or ids.is_floating_point():
            raise ValueError(
                f"token ids must be an integer tensor (B, L) with L <= {self.context_length}, "
                f"got {ids.dtype} {tuple(ids.shape)}; call set_text_len() to change the length"
            )
        x = self.token_embed(ids) + self.pos_embed[: ids.shape[1]].to(self.token_embed.weight.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, -1])
