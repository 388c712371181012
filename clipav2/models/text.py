"""The text tower: token embedding, learned position table, blocks, final LayerNorm, pool,
bias-free projection. CLIPA-v2: 32,000-row WordPiece embedding, bidirectional blocks with no mask
at all (padding included), `last` pooling (the feature of the last position, usually a pad).
CLIPA v1 (CLIP): 49,408-row BPE embedding, causal blocks, `argmax` pooling (the position of the
largest token id, the end-of-text token)."""
import torch
from torch import nn

from clipav2.models.arch import TEXT_POOLS, ClipArch
from clipav2.models.posembed import resample_1d
from clipav2.models.transformer import make_blocks


class TextTower(nn.Module):
    def __init__(self, arch: ClipArch):
        super().__init__()
        t = arch.text
        self.token_embed = nn.Embedding(t.vocab_size, t.width)
        self.pos_embed = nn.Parameter(torch.empty(t.context_length, t.width))
        if t.pool not in TEXT_POOLS:
            raise ValueError(f"text pool must be one of {', '.join(TEXT_POOLS)}, got {t.pool!r}")
        self.pool = t.pool
        self.blocks = make_blocks(t.depth, t.width, t.heads, t.mlp, arch.gelu, arch.ln_eps, arch.attention,
                                  causal=t.causal)
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
        x = self.norm(x)
        if self.pool == "last":
            return self.head(x[:, -1])
        return self.head(x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)])
