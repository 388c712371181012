"""The recipes in configs/ carry every figure of the CLIPA-v2 schedules (arXiv 2306.15658; the
clipa_jax/configs/model_* files) and of the CLIPA v1 scripts (clipa_torch/scripts/exp/gpu), and
load without data (data.train is a placeholder)."""
from pathlib import Path

import pytest

from clipav2.config import load_config
from clipav2.models.arch import ARCHITECTURES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRE, FT224, FT336 = 12_811_670_000, 524_288_000, 131_072_000

# clipa_jax/configs/model_h: (image px, reduction, mask ratio, text len, text reduction, samples, batch, steps, peak LR, warmup)
H14 = [(84, "resize", 0.0, 8, "syntax", PRE, 65_536, 195_490, 2.048e-3, 3_200),
       (224, "random", 0.3, 32, "truncate", FT224, 32_768, 16_000, 5.12e-5, 800),
       (336, "random", 0.4, 32, "truncate", FT336, 16_384, 8_000, 6.4e-6, 1_600)]
EXPECTED = {
    "h14.yaml": ("ViT-H-14-CLIPA", H14, 15_000),
    "h14_10k.yaml": ("ViT-H-14-CLIPA", [(70,) + H14[0][1:], H14[1]], 10_000),
    "bigg14.yaml": ("ViT-bigG-14-CLIPA",
                    [(84, "resize", 0.0, 8, "syntax", PRE, 65_536, 195_490, 1.024e-3, 3_200),
                     (224, "random", 0.4, 32, "truncate", FT224, 16_384, 32_000, 2.56e-5, 0),
                     (336, "random", 0.4, 32, "truncate", FT336, 16_384, 8_000, 6.4e-6, 1_600)], None),
    "l14.yaml": ("ViT-L-14-CLIPA", H14, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_clipav2_recipes_carry_the_spec_figures(name):
    model, stages, budget = EXPECTED[name]
    cfg = load_config(CONFIGS / name)  # no data check: data.train is a placeholder
    assert cfg.model.name == model and cfg.cost.budget_usd == budget
    assert cfg.data.shuffle_buffer == 250_000 and cfg.model.checkpointing == "all"
    assert cfg.parallel.bf16_momentum == (model != "ViT-L-14-CLIPA")  # bf16 first moment for H and bigG
    assert len(cfg.stages) == len(stages)
    for i, (s, want) in enumerate(zip(cfg.stages, stages)):
        px, red, ratio, tl, tred, samples, batch, steps, lr, warmup = want
        got = (s.image_size, s.image_reduction, s.image_mask_ratio, s.text_len, s.text_reduction, s.samples,
               s.global_batch, s.steps, s.warmup_steps)
        assert got == (px, red, ratio, tl, tred, samples, batch, steps, warmup), s.name
        assert s.peak_lr == pytest.approx(lr, rel=1e-12) and s.lr_base_batch == 256
        assert s.eval_transform == ("center_crop" if i == 0 else "resize")
        assert (s.betas, s.eps, s.weight_decay, s.grad_clip) == ((0.9, 0.95), 1e-8, 0.2, None)
        a = s.augment
        assert (a.crop_scale, a.color_jitter, a.color_jitter_p, a.grayscale_p, a.hflip_p) == (
            (0.4, 1.0), (0.32, 0.32, 0.32, 0.08), 0.8, 0.2, 0.0)
        assert a.crop_ratio == pytest.approx((3 / 4, 4 / 3))


def test_overrides_reach_every_recipe_stage_by_name():
    cfg = load_config(CONFIGS / "h14.yaml", ["stages.finetune336.samples=32768", "stages.finetune336.warmup_steps=1", "data.train=/x/{0..1}.tar"])
    assert cfg.stage("finetune336").steps == 2 and cfg.data.train == "/x/{0..1}.tar"


# CLIPA v1 (open_clip docs/script_examples/clipa): 8 GPUs; I = image tokens with the class token
V1 = {
    "b16_i50_t16.yaml": ("ViT-B-16-CL16", 50, 16, "truncate", 65_536, 2.048e-3, 782, 16, 8_192, 2.56e-5, 3_072),
    "l16_i17_t16.yaml": ("ViT-L-16-CL16-Syntax-GAP", 17, 16, "syntax", 32_768, 1.024e-3, 1_563, 16, 7_168, 2.24e-5, 3_571),
    "l16_i37_t8.yaml": ("ViT-L-16-CL8-Syntax-GAP", 37, 8, "syntax", 32_768, 1.024e-3, 1_563, 32, 7_168, 2.24e-5, 3_571),
}


@pytest.mark.parametrize("name", sorted(V1))
def test_clipa_v1_recipes_carry_the_script_figures(name):
    model, tokens, tl, tred, batch, lr, warmup, ft_tl, ft_batch, ft_lr, ft_warmup = V1[name]
    cfg = load_config(CONFIGS / "clipa_v1" / name)
    assert cfg.model.name == model
    pre, ft = cfg.stages
    patch = ARCHITECTURES[model].vision.patch_size
    assert (pre.image_size // patch) ** 2 + 1 == tokens
    assert (pre.text_len, pre.text_reduction, pre.global_batch, pre.warmup_steps) == (tl, tred, batch, warmup)
    assert pre.samples == 2_000 * 1_281_167  # 6.4 LAION-400M epochs = 2,000 ImageNet epochs
    assert pre.peak_lr == pytest.approx(lr, rel=1e-12)
    assert (ft.image_size, ft.text_len, ft.samples, ft.global_batch, ft.warmup_steps) == (224, ft_tl, 131_072_000, ft_batch, ft_warmup)
    assert ft.peak_lr == pytest.approx(ft_lr, rel=1e-12)
    assert ft.global_batch % 8 == 0 and cfg.parallel.strategy == "ddp"
    # clipa_torch's model, tokenizer, decay, positions and crop (scripts: --pos-embed, --model)
    assert ARCHITECTURES[model].init == "open_clip" and (cfg.model.pos_embed, cfg.model.gelu, cfg.model.ln_eps) == ("sincos_open_clip", "exact", 1e-5)
    assert {s.tokenizer_mode for s in cfg.stages} == {"clip_bpe"} and {s.weight_decay_rule for s in cfg.stages} == {"matrices"}
    assert (pre.pos_embed, ft.pos_embed, ft.text_reduction) == (None, "learned", "truncate")
    assert {s.augment.crop_interpolation for s in cfg.stages} == {"bicubic"}
