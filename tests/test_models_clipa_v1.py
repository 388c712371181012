"""CLIPA v1 architectures against clipa_torch: random-init weights of each model, built by the
installed open_clip from the numbers of clipa_torch's own model config JSON
(clipa_torch/open_clip/model_configs/*.json, copied below), load into ours and give the same
embeddings. clipa_torch's GAP averages over all tokens, class token included
(VisionTransformer._global_pool(include_cls=True)), which stock open_clip cannot do: that reference
forward is written out here from open_clip's modules."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipav2.models.arch import ARCHITECTURES
from clipav2.models.convert import from_open_clip
from clipav2.models.posembed import sincos_2d_open_clip

_L16_VISION = {"image_size": 224, "layers": 24, "width": 1024, "patch_size": 16, "global_average_pool": True}
CLIPA_TORCH_JSON = {
    "ViT-B-16-CL16": {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 16},
                      "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12}},
    "ViT-L-16-CL16-Syntax-GAP": {"embed_dim": 768, "vision_cfg": _L16_VISION,
                                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12, "text_mask": "syntax"}},
    "ViT-L-16-CL8-Syntax-GAP": {"embed_dim": 768, "vision_cfg": _L16_VISION,
                                "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12, "text_mask": "syntax"}},
    "ViT-L-16-CL32-GAP": {"embed_dim": 768, "vision_cfg": _L16_VISION,
                          "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 768, "heads": 12, "layers": 12}},
}
CLIPA_TORCH_JSON["ViT-L-16-CL16-GAP"] = {**CLIPA_TORCH_JSON["ViT-L-16-CL32-GAP"],
                                         "text_cfg": {**CLIPA_TORCH_JSON["ViT-L-16-CL32-GAP"]["text_cfg"], "context_length": 16}}
PX = 64  # --force-image-size: a small grid keeps the CPU forward cheap; the weights are full size


def _open_clip_model(cfg):
    """clipa_torch's CLIP for this JSON: open_clip's ViT (ln_pre, class-token pool, exact GELU,
    eps 1e-5) and causal argmax text tower; GAP is computed in `_image_reference`."""
    vision = {k: v for k, v in cfg["vision_cfg"].items() if k != "global_average_pool"}
    vision["image_size"] = PX
    text = {k: v for k, v in cfg["text_cfg"].items() if k != "text_mask"}
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vision, text_cfg=text).eval()
    with torch.no_grad():  # random, not open_clip's init: every tensor matters in the comparison
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def _image_reference(model, images, gap: bool):
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + v.positional_embedding
    x = v.transformer(v.ln_pre(x))
    pooled = x.mean(dim=1) if gap else x[:, 0]
    return F.normalize(v.ln_post(pooled) @ v.proj, dim=-1)


# One of each pool (the L/16 variants differ only in context length, checked against the JSON
# numbers below): full-size models are slow to build on the CPU.
@pytest.mark.parametrize("name", ["ViT-B-16-CL16", pytest.param("ViT-L-16-CL8-Syntax-GAP", marks=pytest.mark.slow)])
def test_clipa_torch_checkpoint_loads_and_matches(name, tmp_path):
    cfg = CLIPA_TORCH_JSON[name]
    ref = _open_clip_model(cfg)
    # a clipa_torch training checkpoint: DDP's "module." prefix under "state_dict"
    path = tmp_path / "epoch_6.pt"
    torch.save({"epoch": 6, "name": name, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    ours = from_open_clip(str(path), name).eval()
    assert ours.arch.vision.image_size == PX and ours.arch.text.context_length == cfg["text_cfg"]["context_length"]
    torch.manual_seed(1)
    images = torch.randn(2, 3, PX, PX)
    length = cfg["text_cfg"]["context_length"]
    ids = torch.randint(1, 49406, (2, length))
    ids[0, 5:] = 0
    ids[0, 4] = 49407  # end-of-text, the largest id: argmax pooling reads it
    ids[1, -1] = 49407
    with torch.no_grad():
        img, txt, scale = ours(images, ids)
        ref_img = _image_reference(ref, images, gap=cfg["vision_cfg"].get("global_average_pool", False))
        ref_txt = F.normalize(ref.encode_text(ids), dim=-1)
    assert (img - ref_img).abs().max().item() <= 1e-4
    assert (txt - ref_txt).abs().max().item() <= 1e-4
    assert scale.item() == pytest.approx(ref.logit_scale.exp().item(), rel=1e-6)


def test_v1_architectures_carry_clipa_torch_json_numbers():
    for name, cfg in CLIPA_TORCH_JSON.items():
        a, v, t = ARCHITECTURES[name], cfg["vision_cfg"], cfg["text_cfg"]
        assert (a.embed_dim, a.vision.width, a.vision.depth, a.vision.patch_size) == (cfg["embed_dim"], v["width"], v["layers"], v["patch_size"])
        assert (a.vision.heads, a.vision.mlp) == (v["width"] // 64, 4 * v["width"])  # head_width 64, mlp_ratio 4
        assert a.vision.pool == ("avg_with_cls" if v.get("global_average_pool") else "tok") and a.vision.ln_pre
        assert (a.text.context_length, a.text.vocab_size, a.text.width, a.text.heads, a.text.depth) == (
            t["context_length"], t["vocab_size"], t["width"], t["heads"], t["layers"])
        assert a.text.causal and a.text.pool == "argmax" and (a.gelu, a.ln_eps) == ("exact", 1e-5)
        assert a.logit_scale_max == 100.0


def test_pretraining_sincos_is_open_clips_table():
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    for grid, width in ((7, 768), (4, 64)):
        ref = torch.from_numpy(get_2d_sincos_pos_embed(width, grid, cls_token=True)).float()
        torch.testing.assert_close(sincos_2d_open_clip(grid, width), ref, atol=1e-6, rtol=0)


def test_logit_scale_is_clamped_at_100():
    from clipav2 import create_model

    model = create_model("ViT-B-16-CL16", image_size=32)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(500.0))
    _, _, scale = model(torch.randn(1, 3, 32, 32), torch.randint(0, 49408, (1, 16)))
    assert scale.item() == pytest.approx(100.0) and model.logit_scale.item() == pytest.approx(math.log(100))


def test_finetune_stage_learns_the_pretraining_sincos_table_resampled(tmp_path):
    """clipa_torch fine-tunes with --pos-embed learnable from the sin-cos checkpoint: the table is
    loaded and resized by open_clip's resize_pos_embed (bicubic, antialias, align_corners False)."""
    from clipav2.config import load_config
    from clipav2.models.convert import load_model, save_model
    from clipav2.train.stages import build_stage_model, stage_weights

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""\
model: {{name: tiny, pos_embed: sincos_open_clip}}
run_dir: {tmp_path}
stages:
  - {{name: pretrain, image_size: 32, text_len: 16, samples: 256, global_batch: 128}}
  - {{name: finetune, image_size: 64, text_len: 16, samples: 256, global_batch: 128, pos_embed: learned}}
""")
    cfg = load_config(recipe)
    before = build_stage_model(cfg, 0, tmp_path)
    assert not isinstance(before.visual.pos_embed, torch.nn.Parameter)
    torch.testing.assert_close(before.visual.pos_embed, sincos_2d_open_clip(4, 32))
    save_model(before, stage_weights(tmp_path, "pretrain"))
    after = build_stage_model(cfg, 1, tmp_path)
    table = sincos_2d_open_clip(4, 32)
    grid = F.interpolate(table[1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2), size=(8, 8), mode="bicubic",
                         antialias=True, align_corners=False).permute(0, 2, 3, 1).reshape(64, 32)
    assert isinstance(after.visual.pos_embed, torch.nn.Parameter) and after.arch.vision.pos_embed == "learned"
    torch.testing.assert_close(after.visual.pos_embed.detach(), torch.cat([table[:1], grid]))
    save_model(after, tmp_path / "ft.safetensors")
    again = load_model(tmp_path / "ft.safetensors")
    torch.testing.assert_close(again.visual.pos_embed, after.visual.pos_embed)


def test_open_clip_export_of_a_v1_pretraining_model_loads_back(tmp_path):
    from clipav2 import create_model
    from clipav2.models.convert import load_model, save_open_clip

    model = create_model("tiny", pos_embed="sincos_open_clip", gelu="exact", ln_eps=1e-5).eval()
    save_open_clip(model, tmp_path / "oc.safetensors")
    again = load_model(tmp_path / "oc.safetensors").eval()
    assert again.arch.vision.pos_embed == "sincos_open_clip"
    images, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 32000, (2, 16))
    with torch.no_grad():
        for a, b in zip(model(images, ids), again(images, ids)):
            torch.testing.assert_close(a, b)
