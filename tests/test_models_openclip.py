"""Parity with open_clip itself: its own CLIPA models, converted into clipav2 and exported back."""
import gc

import open_clip
import pytest
import torch

from clipav2.models.convert import from_open_clip, to_open_clip

from openclip_tiny import TINY


def _captions(n, length):
    """[CLS] + word pieces + zero padding, as the CLIPA tokenizer gives them."""
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        used = int(torch.randint(3, length, (1,), generator=g))
        ids[i, 0] = 101
        ids[i, 1:used] = torch.randint(1000, 30522, (used - 1,), generator=g)
    return ids


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", ["ViT-L-14-CLIPA", pytest.param("ViT-H-14-CLIPA", marks=pytest.mark.slow)])  # H/14: two full-size builds
def test_released_architectures_match_open_clip(name):
    torch.manual_seed(0)
    oc = open_clip.create_model(name, pretrained=None).eval()
    image, ids = torch.randn(1, 3, 224, 224), _captions(3, 32)
    with torch.no_grad():
        ref_img = oc.encode_image(image, normalize=True)
        ref_txt = oc.encode_text(ids, normalize=True)
    # Convert without copying: the big models are held once (ours takes the tensors over).
    state = oc.state_dict()
    del oc
    gc.collect()
    ours = from_open_clip(state, name)
    with torch.no_grad():
        img, txt, scale = ours(image, ids)
    assert _rel(img, ref_img) <= 1e-4 and _rel(txt, ref_txt) <= 1e-4
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-6)

    # Export back: exactly open_clip's original tensors under its own names, and it loads strictly.
    exported = to_open_clip(ours)
    assert exported.keys() == state.keys()
    assert all(torch.equal(exported[k], state[k]) for k in state)
    with torch.device("meta"):
        back = open_clip.model.CLIP(**open_clip.get_model_config(name))
    result = back.load_state_dict(exported, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert not any(t.is_meta for t in [*back.parameters(), *back.buffers()])
    with torch.no_grad():  # the text tower is the cheap one to run again
        assert _rel(back.encode_text(ids, normalize=True), txt) <= 1e-4
    del ours, exported, back, state
    gc.collect()


def test_keep_hook_matches_open_clip_patch_dropout():
    """open_clip's PatchDropout selects patches after the position embedding, class token kept:
    the same indices through our hook give the same embedding."""
    torch.manual_seed(0)
    cfg = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "patch_dropout": 0.5}}
    oc = open_clip.model.CLIP(**cfg).train()  # PatchDropout acts in training mode only
    ours = from_open_clip(oc.state_dict(), "tiny")
    image = torch.randn(3, 3, 32, 32)
    torch.manual_seed(7)
    keep = torch.randn(3, 16).topk(8, dim=-1).indices  # what PatchDropout draws after this seed
    torch.manual_seed(7)
    with torch.no_grad():
        ref = oc.encode_image(image, normalize=True)
        got = ours.encode_image(image, keep)
        full = ours.encode_image(image)
    assert _rel(got, ref) <= 1e-5
    assert _rel(full, ref) > 1e-3  # the hook really dropped tokens


def test_learned_table_resamples_like_open_clip():
    torch.manual_seed(0)
    oc = open_clip.model.CLIP(**TINY)
    ours = from_open_clip(oc.state_dict(), "tiny")
    ours.set_image_size(56)  # 4x4 -> 7x7 grid
    ours.set_text_len(24)
    big = {**TINY, "vision_cfg": {**TINY["vision_cfg"], "image_size": 56}, "text_cfg": {**TINY["text_cfg"], "context_length": 24}}
    resized = open_clip.model.CLIP(**big)
    state = oc.state_dict()
    open_clip.model.resize_pos_embed(state, resized)  # bicubic, antialiased
    open_clip.model.resize_text_pos_embed(state, resized)  # linear
    resized.load_state_dict(state)
    torch.testing.assert_close(ours.visual.pos_embed.detach(), state["visual.positional_embedding"])
    torch.testing.assert_close(ours.text.pos_embed.detach(), state["positional_embedding"])
    image, ids = torch.randn(1, 3, 56, 56), _captions(2, 24)
    with torch.no_grad():
        assert _rel(ours.encode_image(image), resized.encode_image(image, normalize=True)) <= 1e-5
        assert _rel(ours.encode_text(ids), resized.encode_text(ids, normalize=True)) <= 1e-5
