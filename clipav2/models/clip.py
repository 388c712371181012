"""The two-tower CLIP and its factory."""
import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from clipav2.models.arch import ClipArch, get_arch
from clipav2.models.init import init_weights
from clipav2.models.text import TextTower
from clipav2.models.vision import VisionTower


class CLIP(nn.Module):
    """`forward(images, ids, keep=None) -> (image_emb, text_emb, logit_scale.exp())`, both
    embeddings L2-normalised. `logit_scale` is a shape-(1,) parameter in log space, initialised to
    log(1/0.07). JAX (CLIPA-v2) does not clamp it; architectures with `logit_scale_max` (CLIPA v1,
    open_clip's train loop: 100) clamp it to [0, log max] in place before each use. Its exp is
    computed in fp32."""

    def __init__(self, arch: ClipArch):
        super().__init__()
        self.arch = arch
        self.visual = VisionTower(arch)
        self.text = TextTower(arch)
        self.logit_scale = nn.Parameter(torch.full((1,), math.log(1 / 0.07)))
        if not self.text.token_embed.weight.is_meta:
            self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation by the rule of the architecture's upstream code base
        (`arch.init`, see clipav2.models.init)."""
        init_weights(self)

    def encode_image(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised float NCHW images; `keep` (B, K) LongTensor of kept patch indices
        (row-major, class token excluded and always kept) or None for all patches."""
        return F.normalize(self.visual(images, keep), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids), dim=-1)

    def forward(self, images, ids, keep=None):
        if self.arch.logit_scale_max is not None:
            # open_clip clamps the parameter in place after each step; clamping before its next
            # use is the same under single/DDP (FSDP/ZeRO clamp the gathered copy they compute with)
            with torch.no_grad():
                self.logit_scale.data.clamp_(0, math.log(self.arch.logit_scale_max))
        return self.encode_image(images, keep), self.encode_text(ids), self.logit_scale.float().exp()

    # Stage transitions and runtime options; they keep `self.arch` true.
    def set_image_size(self, px: int) -> None:
        self.visual.set_image_size(px)
        self.arch = dataclasses.replace(self.arch, vision=dataclasses.replace(self.arch.vision, image_size=px))

    def make_pos_embed_learnable(self) -> None:
        """A fixed sin-cos image table becomes a learned one with the same values."""
        self.visual.make_pos_embed_learnable()
        self.arch = dataclasses.replace(self.arch, vision=dataclasses.replace(self.arch.vision, pos_embed="learned"))

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
