"""The two-tower CLIP and its factory."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from clipav2.models.arch import ClipArch, get_arch
from clipav2.models.text import TextTower
from clipav2.models.vision import VisionTower


class CLIP(nn.Module):
    """`forward(images, ids, keep=None) -> (image_emb, text_emb, logit_scale.exp())`, both
    embeddings L2-normalised. `logit_scale` is a shape-(1,) parameter in log space, initialised to
    log(1/0.07) and not clamped here (JAX does not clamp; open_clip clamps the scale at 100 in
    its train loop): clamp in the trainer if wanted. Its exp is computed in fp32."""

    def __init__(self, arch: ClipArch):
        super().__init__()
        self.arch = arch
        self.visual = VisionTower(arch)
        self.text = TextTower(arch)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))
        if not self.text.token_embed.weight.is_meta:
            self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """CLIPA / big_vision initialisation: xavier-uniform block matrices with zero biases,
        lecun-normal patch convolution, zero class token, N(0, width^-0.5) heads and learned image
        table, N(0, 0.02) token and N(0, 0.01) text position embeddings."""
        for tower in (self.visual, self.text):
            for block in tower.blocks:
                for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                    nn.init.xavier_uniform_(lin.weight)
                    nn.init.zeros_(lin.bias)
                for norm in (block.norm1, block.norm2):
                    norm.reset_parameters()
            tower.norm.reset_parameters()
            nn.init.normal_(tower.head.weight, std=tower.head.in_features**-0.5)
        w = self.visual.patch_embed.weight
        nn.init.normal_(w, std=(w[0].numel()) ** -0.5)
        nn.init.zeros_(self.visual.class_token)
        if isinstance(self.visual.pos_embed, nn.Parameter):
            nn.init.normal_(self.visual.pos_embed, std=self.visual.pos_embed.shape[1] ** -0.5)
        self.visual.reset_buffers()
        nn.init.normal_(self.text.token_embed.weight, std=0.02)
        nn.init.normal_(self.text.pos_embed, std=0.01)
        self.logit_scale.fill_(math.log(1 / 0.07))

    def encode_image(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float NCHW images; `keep` (B, K) LongTensor of kept patch indices
        (row-major, class token excluded and always kept) or None for all patches."""
        return F.normalize(self.visual(images, keep), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)

    def forward(self, images, ids, keep=None):
        return self.encode_image(images, keep), self.encode_text(ids), self.logit_scale.float().exp()

    # Stage transitions and runtime options; they keep `self.arch` true.
    def set_image_size(self, px: int) -> None:
        self.visual.set_image_size(px)
        self.arch = dataclasses.replace(self.arch, vision=dataclasses.replace(self.arch.vision, image_size=px))

    def set_text_len(self, length: int) -> None:
        self.text.set_text_len(length)
        self.arch = dataclasses.replace(self.arch, text=dataclasses.replace(self.arch.text, context_length=length))

    def set_attention(self, backend: str) -> None:
        for block in [*self.visual.blocks, *self.text.blocks]:
            block.attn.set_backend(backend)
        self.arch = dataclasses.replace(self.arch, attention=backend)


def create_model(name: str, **overrides) -> CLIP:
    """Build a named architecture (open_clip's names, e.g. "ViT-H-14-CLIPA", or "tiny"/"demo")
    with `get_arch` overrides (image_size, context_length, pos_embed, gelu, ln_eps, attention). Under `torch.device("meta")` nothing is allocated or initialised."""
    return CLIP(get_arch(name, **overrides))
