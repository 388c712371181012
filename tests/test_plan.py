"""`clipav2 plan`: the recipe figures of h14 and bigg14 (arXiv 2306.15658 and the clipa_jax
configs), FLOPs against the closed form (docs/cost.md), the cost columns, and bad input."""
import json

import pytest

from clipav2.cli import main
from clipav2.models.arch import get_arch


def _plan(capsys, *argv):
    assert main(["plan", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _closed_form_train_flops(arch, image_size, kept, text_len):
    """3 x forward; per block 2T(4d^2 + 2dm) + 4T^2 d; the patch embedding over all
    n patches; the class token rides along (T = kept + 1); the two heads 2 d e each."""
    def blocks(depth, t, d, m):
        return depth * (2 * t * (4 * d * d + 2 * d * m) + 4 * t * t * d)

    v, x = arch.vision, arch.text
    n = (image_size // v.patch_size) ** 2
    image = 2 * n * 3 * v.patch_size**2 * v.width + blocks(v.depth, kept + 1, v.width, v.mlp) + 2 * v.width * arch.embed_dim
    text = blocks(x.depth, text_len, x.width, x.mlp) + 2 * x.width * arch.embed_dim
    return 3 * (image + text)


def test_h14_plan_matches_the_recipe_figures(capsys):
    doc = _plan(capsys, "configs/h14.yaml")
    stages = doc["stages"]
    assert [s["name"] for s in stages] == ["pretrain", "finetune224", "finetune336"]
    assert [s["samples"] for s in stages] == [12_811_670_000, 524_288_000, 131_072_000]
    assert [s["steps"] for s in stages] == [195_490, 16_000, 8_000]
    assert [s["global_batch"] for s in stages] == [65_536, 32_768, 16_384]
    assert [s["peak_lr"] for s in stages] == pytest.approx([2.048e-3, 5.12e-5, 6.4e-6], rel=1e-12)
    assert [s["warmup_steps"] for s in stages] == [3200, 800, 1600]
    assert [(s["image_size"], s["text_len"]) for s in stages] == [(84, 8), (224, 32), (336, 32)]
    # 36 patches at 84 px; 256 with 30% masked; 576 with 40% masked
    assert [s["kept_image_tokens"] for s in stages] == [36, 179, 345]
    arch = get_arch("ViT-H-14-CLIPA")
    for s in stages:
        per_sample = _closed_form_train_flops(arch, s["image_size"], s["kept_image_tokens"], s["text_len"])
        assert s["train_flops"] == pytest.approx(per_sample * s["samples"], rel=1e-9)
    assert doc["total_train_flops"] == sum(s["train_flops"] for s in stages)
    # H/14 @84 T8 is usually quoted at ~151 training GFLOPs per sample (no class token; docs/cost.md)
    assert stages[0]["train_flops_per_sample"] / 1e9 == pytest.approx(151, rel=0.03)


def test_bigg14_plan_matches_the_recipe_figures(capsys):
    stages = _plan(capsys, "configs/bigg14.yaml")["stages"]
    assert [s["steps"] for s in stages] == [195_490, 32_000, 8_000]
    assert [s["global_batch"] for s in stages] == [65_536, 16_384, 16_384]
    assert [s["peak_lr"] for s in stages] == pytest.approx([1.024e-3, 2.56e-5, 6.4e-6], rel=1e-12)


def test_cost_columns_follow_from_flops_mfu_and_price(capsys):
    doc = _plan(capsys, "configs/h14.yaml", "--gpu", "h100", "--gpus", "64", "--mfu", "0.45", "--price", "2.5")
    for s in doc["stages"]:
        gpu_hours = s["train_flops"] / (0.45 * 989e12) / 3600
        assert s["gpu_hours"] == pytest.approx(gpu_hours)
        assert s["wall_hours"] == pytest.approx(gpu_hours / 64)
        assert s["cost_usd"] == pytest.approx(gpu_hours * 2.5)
    assert doc["total_gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in doc["stages"]))
    assert doc["total_cost_usd"] == pytest.approx(sum(s["cost_usd"] for s in doc["stages"]))
    assert doc["budget_usd"] == 15000


def test_measured_samples_per_second_scales_later_stages_by_flops(capsys):
    doc = _plan(capsys, "configs/h14.yaml", "--gpu", "h100", "--gpus", "64", "--samples-per-s", "2900")
    first, second = doc["stages"][0], doc["stages"][1]
    assert first["gpu_hours"] == pytest.approx(first["samples"] / 2900 / 3600)
    # the measured rate holds in the FLOPs the GPUs execute: train FLOPs with checkpointing's recomputation
    executed = lambda s: s["train_flops_per_sample"] * s["checkpointing_factor"]  # noqa: E731
    ratio = executed(second) / executed(first)
    assert second["gpu_hours"] == pytest.approx(second["samples"] / (2900 / ratio) / 3600)


def test_text_output_and_overrides(capsys):
    assert main(["plan", "configs/h14_10k.yaml", "stages.pretrain.samples=655360", "stages.pretrain.warmup_steps=2", "--gpu", "a100"]) == 0
    out = capsys.readouterr().out
    assert "pretrain" in out and "655,360" in out and "budget $10,000" in out and "MFU 26.5%" in out


def test_cost_without_flags_says_why_and_defaults_are_printed_as_assumed(capsys):
    assert main(["plan", "configs/h14.yaml"]) == 0  # cost.gpu: auto, and no --gpu
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("cost left out: the recipe's cost.gpu is auto") and "--gpu" in last
    # no --mfu: the paper's A100 MFU, so the paper's own setting gives back its 8,640 A100-hours
    doc = _plan(capsys, "configs/h14.yaml", "--gpu", "a100-80gb", "--gpus", "64")
    assert doc["mfu"] == 0.265 and doc["total_gpu_hours"] == pytest.approx(8_640, rel=0.01)
    assert [a.split(",")[0].split(" (")[0] for a in doc["assumed"]] == ["MFU 26.5%", "the price table's $/GPU-hour"]
    assert main(["plan", "configs/h14.yaml", "--gpu", "h100", "--samples-per-s", "2900", "--price", "2"]) == 0
    out = capsys.readouterr().out
    assert "assumed: 8 GPUs (--gpus)" in out and "MFU" not in out.split("assumed:", 1)[1]


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "b300"], "unknown accelerator 'b300'"),
    (["--gpu", "h100", "--price", "-1"], "price per GPU-hour"),
    (["--gpu", "h100", "--price", "abc"], "not a number"),
    (["--gpu", "h100", "--mfu", "0"], "--mfu"),
    (["--gpu", "h100", "--gpus", "0"], "--gpus"),
    (["--gpus", "8"], "--gpu"),
    (["stages.pretrain.image_size=85"], "stages.pretrain.image_size"),
    (["--memory", "--gpu", "tpu-v3"], "no memory size known for tpu-v3"),
    (["--memory", "--gpus", "0"], "--gpus"),
    (["--memory", "--gpus", "3"], "not divisible by world size 3"),
    (["--memory", "parallel.strategy=deepspeed"], "DeepSpeed"),
])
def test_bad_input_is_named(capsys, argv, message):
    assert main(["plan", "configs/h14.yaml", *argv]) == 2
    assert message in capsys.readouterr().err
