"""Random initialisation, one rule per upstream code base, chosen by `ClipArch.init`.

"clipa_jax" follows CLIPA's `clipa_jax/models/` (ViT-B/L/H-14 CLIPA-v2, trained with main.py):
  image blocks: xavier-uniform kernels, each of q, k, v on its own D x D matrix (flax
    MultiHeadDotProductAttention), out-projection and both MLP layers xavier-uniform too;
  text blocks (text_transformer.py): q, k, v ~ N(0, w^-1/2), out-projection and second MLP layer
    ~ N(0, w^-1/2 (2*12)^-1/2), first MLP layer ~ N(0, (2w)^-1/2). The 12 is the block's own
    `depth` default: the Encoder never passes its depth down, so it is 12 for every model.
"clipa_jax_t5x" follows `clipa_jax/models_t5x/` (ViT-bigG-14 CLIPA-v2, main_t5x.py): the text
  block rule above in both towers.
"open_clip" follows open_clip as forked by clipa_torch (CLIPA v1): the image tower keeps
  PyTorch's module defaults (nn.MultiheadAttention: xavier-uniform on the fused 3D x D in-projection,
  zero in/out biases; nn.Linear / nn.Conv2d: U(+-fan_in^-1/2) weights and biases), class token,
  learned positions and projection N(0, w^-1/2); the text tower is TextTransformer.init_parameters
  with its real depth L: in-projection N(0, w^-1/2), out-projection and c_proj
  N(0, w^-1/2 (2L)^-1/2), c_fc N(0, (2w)^-1/2), MLP biases PyTorch's default, token embedding
  N(0, 0.02), positions N(0, 0.01), projection N(0, w^-1/2); temperature log(1/0.07).
The two JAX rules: biases 0, LayerNorm 1 and 0, patch convolution lecun-normal (flax's default:
truncated at 2 sigma, rescaled to std fan_in^-1/2), class token 0, learned image positions N(0, w^-1/2), token
embedding N(0, 0.02), text positions N(0, 0.01), heads N(0, tower width^-1/2), temperature
log(1/0.07) (two_towers.py `temperature_init`).
"""
import math

import torch
from torch import nn

FAMILIES = ("clipa_jax", "clipa_jax_t5x", "open_clip")
UPSTREAM_BLOCK_DEPTH = 12  # Encoder1DBlock.depth default, never overridden upstream
_TRUNC_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2] (flax's constant)


def lecun_normal_(weight: torch.Tensor) -> None:
    """flax `lecun_normal`: truncated normal on [-2, 2] sigma with final std fan_in^-1/2."""
    std = weight[0].numel() ** -0.5 / _TRUNC_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def _xavier_block(block) -> None:
    d = block.attn.proj.in_features
    for i in range(3):  # q, k, v: separate flax kernels, fans (D, D), not the fused (D, 3D)
        nn.init.xavier_uniform_(block.attn.qkv.weight[i * d:(i + 1) * d])
    for lin in (block.attn.proj, block.mlp.fc1, block.mlp.fc2):
        nn.init.xavier_uniform_(lin.weight)


def _scaled_normal_block(block) -> None:
    w = block.attn.proj.in_features
    proj = w**-0.5 * (2 * UPSTREAM_BLOCK_DEPTH) ** -0.5
    nn.init.normal_(block.attn.qkv.weight, std=w**-0.5)
    nn.init.normal_(block.attn.proj.weight, std=proj)
    nn.init.normal_(block.mlp.fc1.weight, std=(2 * w) ** -0.5)
    nn.init.normal_(block.mlp.fc2.weight, std=proj)


def _torch_default(lin: nn.Module) -> None:
    lin.reset_parameters()  # nn.Linear / nn.Conv2d: kaiming-uniform(a=sqrt 5) = U(+-fan_in^-1/2)


def _init_open_clip(model) -> None:
    v, t = model.visual, model.text
    for block in v.blocks:
        nn.init.xavier_uniform_(block.attn.qkv.weight)  # nn.MultiheadAttention._reset_parameters
        nn.init.zeros_(block.attn.qkv.bias)
        _torch_default(block.attn.proj)
        nn.init.zeros_(block.attn.proj.bias)
        _torch_default(block.mlp.fc1)
        _torch_default(block.mlp.fc2)
    w, depth = t.token_embed.weight.shape[1], len(t.blocks)
    proj = w**-0.5 * (2 * depth) ** -0.5
    for block in t.blocks:
        nn.init.normal_(block.attn.qkv.weight, std=w**-0.5)
        nn.init.zeros_(block.attn.qkv.bias)
        nn.init.normal_(block.attn.proj.weight, std=proj)
        nn.init.zeros_(block.attn.proj.bias)
        _torch_default(block.mlp.fc1)
        nn.init.normal_(block.mlp.fc1.weight, std=(2 * w) ** -0.5)
        _torch_default(block.mlp.fc2)
        nn.init.normal_(block.mlp.fc2.weight, std=proj)
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.reset_parameters()
    _torch_default(v.patch_embed)
    width = v.class_token.shape[0]
    nn.init.normal_(v.class_token, std=width**-0.5)
    if isinstance(v.pos_embed, nn.Parameter):
        nn.init.normal_(v.pos_embed, std=width**-0.5)
    v.reset_buffers()
    nn.init.normal_(v.head.weight, std=width**-0.5)
    nn.init.normal_(t.token_embed.weight, std=0.02)
    nn.init.normal_(t.pos_embed, std=0.01)
    nn.init.normal_(t.head.weight, std=w**-0.5)
    model.logit_scale.fill_(math.log(1 / 0.07))


@torch.no_grad()
def init_weights(model) -> None:
    """Initialise a `CLIP` in place by the rule its architecture names."""
    family = model.arch.init
    if family not in FAMILIES:
        raise ValueError(f"unknown init family {family!r}; choose one of {', '.join(FAMILIES)}")
    if family == "open_clip":
        return _init_open_clip(model)
    image_block = _xavier_block if family == "clipa_jax" else _scaled_normal_block
    for tower, init_block in ((model.visual, image_block), (model.text, _scaled_normal_block)):
        for block in tower.blocks:
            init_block(block)
            for lin in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
                nn.init.zeros_(lin.bias)
            block.norm1.reset_parameters()
            block.norm2.reset_parameters()
        tower.norm.reset_parameters()
        nn.init.normal_(tower.head.weight, std=tower.head.in_features**-0.5)
    lecun_normal_(model.visual.patch_embed.weight)
    nn.init.zeros_(model.visual.class_token)
    if isinstance(model.visual.pos_embed, nn.Parameter):
        nn.init.normal_(model.visual.pos_embed, std=model.visual.pos_embed.shape[1] ** -0.5)
    model.visual.reset_buffers()
    nn.init.normal_(model.text.token_embed.weight, std=0.02)
    nn.init.normal_(model.text.pos_embed, std=0.01)
    model.logit_scale.fill_(math.log(1 / 0.07))
