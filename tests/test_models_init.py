"""Random initialisation against the formulas of CLIPA's two JAX code bases, written out here:
clipa_jax/models/ (vit.py, text_transformer.py, two_towers.py) and clipa_jax/models_t5x/ (both
towers use text_transformer.py's block rule). Every parameter of a small model is checked."""
import math

import pytest
import torch

from clipav2.models.arch import ARCHITECTURES, ClipArch, TextArch, VisionArch
from clipav2.models.clip import CLIP

D, MLP, EMBED, TEXT_D = 64, 256, 48, 96  # widths differ so a formula using the wrong one fails


def _small(init: str, pos_embed: str = "learned") -> CLIP:
    torch.manual_seed(0)
    arch = ClipArch(
        name="small", embed_dim=EMBED, init=init,
        vision=VisionArch(image_size=32, patch_size=8, width=D, depth=2, mlp=MLP, heads=4, pos_embed=pos_embed),
        text=TextArch(context_length=16, width=TEXT_D, depth=2, mlp=4 * TEXT_D, heads=4, vocab_size=1000),
    )
    return CLIP(arch)


def _normal(t, std, name):
    """Mean and std within ~4 standard errors; a normal's tails where there are enough values."""
    t = t.detach().flatten().double()
    n = t.numel()
    assert abs(t.mean().item()) < 4 * std / math.sqrt(n), name
    assert t.std().item() == pytest.approx(std, rel=max(0.08, 4 / math.sqrt(2 * n))), name
    if n >= 1000:
        assert t.abs().max().item() > 3 * std, f"{name}: tails too short for a normal"


def _uniform(t, bound, name):
    t = t.detach().flatten().double()
    assert t.abs().max().item() <= bound * (1 + 1e-6), name
    assert t.abs().max().item() > 0.97 * bound, name
    assert t.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05), name


def _xavier(fan_in, fan_out):
    return math.sqrt(6 / (fan_in + fan_out))


def _check_scaled_normal_block(prefix, block_params, w, checked):
    """text_transformer.py Encoder1DBlock: depth is its default 12 (never passed down)."""
    proj = w**-0.5 * (2 * 12) ** -0.5
    _normal(block_params["attn.qkv.weight"], w**-0.5, prefix + "qkv")
    _normal(block_params["attn.proj.weight"], proj, prefix + "proj")
    _normal(block_params["mlp.fc1.weight"], (2 * w) ** -0.5, prefix + "fc1")
    _normal(block_params["mlp.fc2.weight"], proj, prefix + "fc2")
    checked.update(prefix + k for k in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"))


def _check_xavier_block(prefix, block_params, checked):
    """vit.py: flax MultiHeadDotProductAttention(kernel_init=xavier_uniform) inits query, key and
    value as three D x (heads*head_dim) kernels; MlpBlock both Dense layers xavier_uniform."""
    qkv = block_params["attn.qkv.weight"]
    for i, part in enumerate("qkv"):
        _uniform(qkv[i * D:(i + 1) * D], _xavier(D, D), prefix + part)
    _uniform(block_params["attn.proj.weight"], _xavier(D, D), prefix + "proj")
    _uniform(block_params["mlp.fc1.weight"], _xavier(D, MLP), prefix + "fc1")
    _uniform(block_params["mlp.fc2.weight"], _xavier(MLP, D), prefix + "fc2")
    checked.update(prefix + k for k in ("attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"))


@pytest.mark.parametrize("family", ["clipa_jax", "clipa_jax_t5x"])
def test_every_parameter_follows_the_upstream_formula(family):
    model = _small(family)
    params = dict(model.named_parameters())
    checked = set()
    for tower, width in (("visual", D), ("text", TEXT_D)):
        for i in range(2):
            prefix = f"{tower}.blocks.{i}."
            block = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            if tower == "visual" and family == "clipa_jax":
                _check_xavier_block(prefix, block, checked)
            else:
                _check_scaled_normal_block(prefix, block, width, checked)
        # biases zero, LayerNorm scale 1 and bias 0 (flax defaults)
        for name, p in params.items():
            if name.startswith(tower) and (name.endswith(".bias") or ".norm" in name):
                expect = 1.0 if ".norm" in name and name.endswith(".weight") else 0.0
                assert torch.all(p == expect), name
                checked.add(name)
        # heads: Dense(kernel_init=normal(stddev=width ** -0.5)), width = the tower's
        _normal(params[f"{tower}.head.weight"], width**-0.5, f"{tower}.head")
        checked.add(f"{tower}.head.weight")
    # patch embedding: flax Conv default lecun_normal = truncated normal, std fan_in^-1/2
    patch = params["visual.patch_embed.weight"]
    std = (3 * 8 * 8) ** -0.5
    assert patch.std().item() == pytest.approx(std, rel=0.05)
    assert patch.abs().max().item() <= 2 * std / 0.87962566103423978 * (1 + 1e-6)
    assert torch.all(params["visual.class_token"] == 0)  # self.param("cls", zeros)
    _normal(params["visual.pos_embed"], D**-0.5, "image pos")  # get_posemb "learn"
    _normal(params["text.token_embed.weight"], 0.02, "token embedding")
    _normal(params["text.pos_embed"], 0.01, "text pos")
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))  # temperature_init 1/0.07
    checked.update({"visual.patch_embed.weight", "visual.class_token", "visual.pos_embed",
                    "text.token_embed.weight", "text.pos_embed", "logit_scale"})
    assert checked == set(params), f"unchecked: {sorted(set(params) - checked)}"


def test_fused_qkv_is_not_initialised_as_one_matrix():
    """xavier on the fused 3D x D matrix would give bound sqrt(6 / 4D), not sqrt(6 / 2D)."""
    qkv = _small("clipa_jax").visual.blocks[0].attn.qkv.weight
    assert qkv.abs().max().item() > 1.2 * _xavier(3 * D, D)


def test_each_architecture_names_its_upstream_family():
    assert ARCHITECTURES["ViT-H-14-CLIPA"].init == "clipa_jax"  # main.py, clipa_jax/models/
    assert ARCHITECTURES["ViT-L-14-CLIPA"].init == "clipa_jax"  # configs/model_l: main.py
    assert ARCHITECTURES["ViT-bigG-14-CLIPA"].init == "clipa_jax_t5x"  # main_t5x.py, models_t5x/
    assert ARCHITECTURES["ViT-bigG-14-CLIPA-336"].init == "clipa_jax_t5x"


def test_unknown_family_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown init family 'jax'"):
        _small("jax")


def test_open_clip_family_is_clipa_torchs_init():
    """clipa_torch (open_clip) for CLIPA v1: the image tower keeps PyTorch's module defaults
    (VisionTransformer.init_parameters is empty), the text tower TextTransformer.init_parameters
    with its real depth; class token, positions and image projection scale * randn."""
    torch.manual_seed(0)
    arch = ClipArch(
        name="small_v1", embed_dim=EMBED, init="open_clip", gelu="exact", ln_eps=1e-5,
        vision=VisionArch(image_size=32, patch_size=8, width=D, depth=2, mlp=MLP, heads=4, pos_embed="learned", pool="tok", ln_pre=True),
        text=TextArch(context_length=16, width=TEXT_D, depth=3, mlp=4 * TEXT_D, heads=4, vocab_size=1000, pool="argmax", causal=True),
    )
    model = CLIP(arch)
    params = dict(model.named_parameters())
    checked = set()

    def u(name, fan_in):  # nn.Linear / nn.Conv2d reset_parameters: U(+-fan_in^-1/2)
        t, bound = params[name].detach(), fan_in**-0.5
        if t.numel() > 1000:
            _uniform(t, bound, name)
        else:  # a bias: too few values for the std, the bound still tells
            assert 0.8 * bound < t.abs().max().item() <= bound, name
        checked.add(name)

    def n(name, std):
        _normal(params[name], std, name)
        checked.add(name)

    for i in range(2):
        b = f"visual.blocks.{i}."
        _uniform(params[b + "attn.qkv.weight"], _xavier(D, 3 * D), b + "qkv")  # fused in_proj_weight
        checked.add(b + "attn.qkv.weight")
        u(b + "attn.proj.weight", D)
        u(b + "mlp.fc1.weight", D)
        u(b + "mlp.fc1.bias", D)
        u(b + "mlp.fc2.weight", MLP)
        u(b + "mlp.fc2.bias", MLP)
    proj = TEXT_D**-0.5 * (2 * 3) ** -0.5  # the text tower's own depth, 3
    for i in range(3):
        b = f"text.blocks.{i}."
        n(b + "attn.qkv.weight", TEXT_D**-0.5)
        n(b + "attn.proj.weight", proj)
        n(b + "mlp.fc1.weight", (2 * TEXT_D) ** -0.5)
        n(b + "mlp.fc2.weight", proj)
        u(b + "mlp.fc1.bias", TEXT_D)
        u(b + "mlp.fc2.bias", 4 * TEXT_D)
    for name, p in params.items():  # MultiheadAttention zeroes its biases; LayerNorm 1 and 0
        if name.endswith(("attn.qkv.bias", "attn.proj.bias")) or ".norm" in name:
            assert torch.all(p == (1.0 if ".norm" in name and name.endswith(".weight") else 0.0)), name
            checked.add(name)
    u("visual.patch_embed.weight", 3 * 8 * 8)
    n("visual.class_token", D**-0.5)
    n("visual.pos_embed", D**-0.5)
    n("visual.head.weight", D**-0.5)
    n("text.token_embed.weight", 0.02)
    n("text.pos_embed", 0.01)
    n("text.head.weight", TEXT_D**-0.5)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    checked.add("logit_scale")
    assert checked == set(params), f"unchecked: {sorted(set(params) - checked)}"
