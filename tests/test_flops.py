"""FLOP and parameter counts against open_clip's published profile, the quoted training figures (docs/cost.md),
open_clip's own models (on meta) and torch's FLOP counter on real forwards."""
import json

import open_clip
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipav2 import cli
from clipav2.models import create_model, get_arch
from clipav2.models.flops import count_params, forward_flops, recompute_flops, train_flops
from clipav2.parallel.apply import apply_ac

# open_clip docs/model_profile.csv: params total / image / text (M), GFLOPs at 224
PROFILE = {
    "ViT-L-14-CLIPA": (414.21, 303.96, 110.25, 167.5),
    "ViT-H-14-CLIPA": (968.24, 632.07, 336.16, 354.02),
    "ViT-bigG-14-CLIPA": (2517.22, 1844.9, 672.32, 1007.93),
}


@pytest.mark.parametrize("name", PROFILE)
def test_gflops_match_open_clip_profile(name):
    assert forward_flops(name) / 1e9 == pytest.approx(PROFILE[name][3], rel=1e-4)  # class token counted


@pytest.mark.parametrize(
    "name, size, text_len, gflops",
    [  # docs/cost.md: training GFLOPs per sample, class token left out
        ("ViT-H-14-CLIPA", 84, 8, 151), ("ViT-H-14-CLIPA", 224, 32, 1058), ("ViT-H-14-CLIPA", 336, 32, 2398),
        ("ViT-bigG-14-CLIPA", 84, 8, 429), ("ViT-bigG-14-CLIPA", 224, 32, 3012), ("ViT-bigG-14-CLIPA", 336, 32, 6803),
    ],
)
def test_training_flops_match_the_quoted_figures(name, size, text_len, gflops):
    got = train_flops(name, image_size=size, text_len=text_len, class_token=False) / 1e9
    assert got == pytest.approx(gflops, rel=5e-3)  # quoted in whole GFLOPs


def _matmul_attention(q, k, v):
    """Plain-matmul attention: torch's counter does not see inside the CPU SDPA kernel."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    return ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1).matmul(v).transpose(1, 2)


@pytest.mark.parametrize("size, kept, text_len", [(32, None, 16), (64, 20, 8), (48, 5, 16)])
def test_analytic_count_equals_torch_flop_counter(size, kept, text_len):
    """Every matmul, convolution and attention product the model really runs, counted by torch."""
    model = create_model("demo", image_size=size)
    for block in [*model.visual.blocks, *model.text.blocks]:
        block.attn.attend = _matmul_attention
    model.set_text_len(text_len)
    n = (size // 8) ** 2
    keep = None if kept is None else torch.stack([torch.randperm(n)[:kept] for _ in range(2)])
    images, ids = torch.randn(2, 3, size, size), torch.zeros(2, text_len, dtype=torch.long)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(images, ids, keep)
    assert counter.get_total_flops() == 2 * forward_flops("demo", size, kept, text_len)


def _train_step_flops(checkpointing: str, size: int, kept: int, text_len: int) -> int:
    """Forward and backward of two samples of `demo` (mlp = 4 x width), counted by torch."""
    torch.manual_seed(0)
    model = apply_ac(create_model("demo", image_size=size), checkpointing)
    model.set_text_len(text_len)
    for block in [*model.visual.blocks, *model.text.blocks]:
        block.attn.attend = _matmul_attention
    keep = torch.stack([torch.randperm((size // 8) ** 2)[:kept] for _ in range(2)])
    with FlopCounterMode(display=False) as counter:
        image, text, scale = model(torch.randn(2, 3, size, size), torch.zeros(2, text_len, dtype=torch.long), keep)
        (image @ text.T * scale).logsumexp(1).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("checkpointing", ["all", "every_2"])
def test_checkpointing_recomputes_each_block_up_to_fc2(checkpointing):
    """What checkpointing adds, counted by torch, is the analytic recomputation exactly: the
    block's forward without fc2 (non-reentrant checkpoint stops once the backward has what it
    needs). With every block checkpointed that is +22% of the step, not the +1/3 of a forward."""
    size, kept, text_len = 64, 40, 16
    plain = _train_step_flops("none", size, kept, text_len)
    added = _train_step_flops(checkpointing, size, kept, text_len) - plain
    assert added == 2 * recompute_flops("demo", checkpointing, size, kept, text_len)
    share = recompute_flops("demo", checkpointing, size, kept, text_len) / train_flops("demo", size, kept, text_len)
    print(f"{checkpointing}: counted +{added / plain:.2%}, analytic +{share:.2%}")
    assert added / plain == pytest.approx(share, rel=0.02)  # the counter skips the patch convolution's input gradient
    if checkpointing == "all":
        assert 0.20 < share < 0.23  # 2/9 of the step less attention's share, where a full forward would be 1/3


def test_recipe_checkpointing_factor():
    """The recipes checkpoint every block: +22% at H/14 pre-training and bigG fine-tuning shapes
    (bigG's wider MLP, 4.92 x width, weighs fc2 more: +21.7%)."""
    for name, size, kept, text_len in (("ViT-H-14-CLIPA", 84, 36, 8), ("ViT-bigG-14-CLIPA", 224, 179, 32)):
        share = recompute_flops(name, "all", size, kept, text_len) / train_flops(name, size, kept, text_len)
        assert 0.21 < share < 0.23, (name, share)
        assert recompute_flops(name, "none", size, kept, text_len) == 0


@pytest.mark.parametrize("name", PROFILE)
def test_params_equal_open_clip(name):
    """open_clip stores the image position table as a parameter: with pos_embed="learned" we hold
    exactly its parameters; the default sin-cos table is a buffer and (grid^2+1) x width fewer."""
    with torch.device("meta"):
        oc = open_clip.model.CLIP(**open_clip.get_model_config(name))
    oc_total = sum(p.numel() for p in oc.parameters())
    oc_image = sum(p.numel() for p in oc.visual.parameters())
    learned = count_params(get_arch(name, pos_embed="learned"))
    assert learned == {"total": oc_total, "image": oc_image, "text": oc_total - oc_image - 1}  # -1: temperature
    total, image, text, _ = PROFILE[name]
    assert learned["total"] / 1e6 == pytest.approx(total, rel=5e-4)
    assert learned["image"] / 1e6 == pytest.approx(image, rel=5e-4)
    assert learned["text"] / 1e6 == pytest.approx(text, rel=5e-4)
    v = get_arch(name).vision
    assert count_params(name)["total"] == oc_total - (v.grid**2 + 1) * v.width


def test_models_command_lists_every_architecture(capsys):
    assert cli.main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"tiny", "demo", "ViT-B-16-CLIPA", "ViT-H-14-CLIPA-336", "ViT-bigG-14-CLIPA-336"} <= set(rows)
    for name, (total, image, text, gflops) in PROFILE.items():
        r = rows[name]
        assert {"name", "params_total", "params_image", "params_text", "gflops"} <= set(r)
        assert r["params_total"] / 1e6 == pytest.approx(total, rel=5e-4)
        assert r["params_image"] / 1e6 == pytest.approx(image, rel=5e-4)
        assert r["params_text"] / 1e6 == pytest.approx(text, rel=5e-4)
        assert r["gflops"] == pytest.approx(gflops, rel=1e-2)
    assert cli.main(["models"]) == 0
    assert "ViT-H-14-CLIPA" in capsys.readouterr().out


def test_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="patch size 14"):
        forward_flops("ViT-H-14-CLIPA", image_size=100)
    with pytest.raises(ValueError, match="kept_image_tokens"):
        forward_flops("ViT-H-14-CLIPA", kept_image_tokens=300)


def test_models_table_columns_line_up(capsys):
    from clipav2 import cli

    assert cli.main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()[:-1]  # the header and a row per model (the note after)
    assert len(lines) > 10 and len({len(line) for line in lines}) == 1, lines
