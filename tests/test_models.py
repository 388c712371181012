"""The CLIP module on tiny architectures: outputs, the keep hook, stage transitions, checkpointing,
and the errors bad input gets."""
import math

import numpy as np
import pytest
import torch

import clipav2
from clipav2.models import create_model
from clipav2.models.posembed import sincos_2d
from clipav2.parallel.apply import apply_ac


def _inputs(model, batch=2):
    px, ctx = model.visual.image_size, model.text.context_length
    return torch.randn(batch, 3, px, px), torch.randint(0, 32000, (batch, ctx))


def test_forward_gives_unit_embeddings_and_initial_temperature():
    torch.manual_seed(0)
    model = clipav2.create_model("tiny")
    img, txt, scale = model(*_inputs(model, 3))
    assert img.shape == txt.shape == (3, 32)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    assert model.logit_scale.shape == (1,) and model.logit_scale.dtype == torch.float32
    assert scale.item() == pytest.approx(1 / 0.07)  # exp(log(1/0.07)), not clamped
    assert "visual.pos_embed" not in model.state_dict()  # the sin-cos table is a buffer


def test_keep_of_all_patches_in_any_order_equals_no_keep():
    """Attention and the average pool ignore order, so a permutation of every patch must give the
    same embedding; a proper subset must not."""
    torch.manual_seed(0)
    model = create_model("tiny")
    images, _ = _inputs(model)
    n = model.visual.grid**2
    perm = torch.stack([torch.randperm(n) for _ in range(2)])
    with torch.no_grad():
        full = model.encode_image(images)
        torch.testing.assert_close(model.encode_image(images, perm), full, atol=1e-5, rtol=1e-5)
        subset = model.encode_image(images, perm[:, : n // 2])
        torch.testing.assert_close(model.encode_image(images, perm[:, : n // 2].flip(1)), subset, atol=1e-5, rtol=1e-5)
    assert (subset - full).abs().max() > 1e-3


def _jax_sincos(h, w, width):
    """big_vision's posemb_sincos_2d (big_vision/models/vit.py), written again in numpy."""
    y, x = np.mgrid[:h, :w]
    omega = np.arange(width // 4) / (width // 4 - 1)
    omega = 1.0 / (10000**omega)
    y = np.einsum("m,d->md", y.flatten(), omega)
    x = np.einsum("m,d->md", x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)


def test_sincos_is_the_jax_form_for_any_grid():
    for grid, width in [(4, 32), (6, 128), (16, 1280)]:
        table = sincos_2d(grid, width)
        assert table.shape == (grid * grid + 1, width)
        assert torch.equal(table[0], torch.zeros(width))  # class token row
        np.testing.assert_allclose(table[1:].numpy(), _jax_sincos(grid, grid, width), atol=1e-6)
    # D/4 - 1 divisor: the last frequency is exactly 1/10000 (open_clip's D/4 would not reach it)
    y_sin = sincos_2d(2, 8)[3, 4:6]  # patch (row 1, col 0): its sin(y * omega) block
    assert y_sin.tolist() == pytest.approx([math.sin(1.0), math.sin(1e-4)], abs=1e-7)


def test_image_size_change_recomputes_sincos_and_matches_a_fresh_model():
    torch.manual_seed(0)
    model = create_model("demo")
    fresh = create_model("demo", image_size=96)
    fresh.load_state_dict(model.state_dict())  # no image table in the state: sizes are free
    model.set_image_size(96)
    assert model.arch.vision.image_size == 96 and model.visual.pos_embed.shape == (145, 128)
    images = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images), fresh.encode_image(images))


def test_text_length_change_is_linear_interpolation():
    model = create_model("tiny")
    old = model.text.pos_embed.detach().clone()  # 16 rows
    model.set_text_len(32)
    assert model.arch.text.context_length == 32
    # half-pixel centres: new row j samples old position (j + 0.5) / 2 - 0.5, clamped at the ends
    src = np.clip((np.arange(32) + 0.5) / 2 - 0.5, 0, 15)
    want = np.stack([np.interp(src, np.arange(16), old[:, c].numpy()) for c in range(old.shape[1])], 1)
    np.testing.assert_allclose(model.text.pos_embed.detach().numpy(), want, atol=1e-6)
    assert model.encode_text(torch.zeros(2, 32, dtype=torch.long)).shape == (2, 32)


def _grads(model, images, ids):
    model.zero_grad()
    img, txt, scale = model(images, ids)
    (scale * img @ txt.t()).logsumexp(1).sum().backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("mode, recomputed", [("all", 4), ("every_2", 2)])
def test_checkpointing_gives_the_same_gradients(mode, recomputed):
    torch.manual_seed(0)
    model = create_model("demo")  # 4 vision + 4 text blocks
    images, ids = _inputs(model)
    calls = []
    for block in model.visual.blocks:
        block.attn.register_forward_pre_hook(lambda *_: calls.append(1))  # once per run of the block
    reference = _grads(model, images, ids)
    assert len(calls) == 4
    apply_ac(model, mode)
    calls.clear()
    got = _grads(model, images, ids)
    assert len(calls) == 4 + recomputed  # checkpointed blocks ran again in backward
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-5, atol=1e-7, msg=k)


def test_meta_device_builds_without_allocating():
    with torch.device("meta"):
        model = create_model("ViT-bigG-14-CLIPA")
    assert all(p.is_meta for p in model.parameters())
    assert len(model.visual.blocks) == 48 and isinstance(model.text.blocks, torch.nn.ModuleList)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: create_model("ViT-Z-99"), "unknown architecture 'ViT-Z-99'"),
        (lambda: create_model("ViT-L-14-CLIPA", image_size=225), "not a multiple of the patch size 14"),
        (lambda: create_model("tiny").set_image_size(36), "36 is not a multiple of the patch size 8"),
        (lambda: apply_ac(create_model("tiny"), "every_0"), "every_<k>"),
        (lambda: create_model("tiny", pos_embed="rope"), "pos_embed"),
        (lambda: create_model("tiny", gelu="quick"), "gelu"),
        (lambda: create_model("tiny", attention="magic"), "unknown attention backend 'magic'"),
        (lambda: create_model("tiny").encode_image(torch.randn(1, 3, 48, 48)), r"\(B, 3, 32, 32\).*set_image_size"),
        (lambda: create_model("tiny").encode_text(torch.zeros(1, 17, dtype=torch.long)), "L <= 16"),
        (lambda: create_model("tiny").encode_image(torch.randn(1, 3, 32, 32), torch.zeros(1, 2)), "LongTensor"),
    ],
)
def test_bad_input_is_a_clear_error(build, match):
    with pytest.raises((KeyError, ValueError), match=match):
        build()
