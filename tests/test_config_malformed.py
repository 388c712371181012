"""Fifty-odd malformed recipes through `clipav2 train`: each is rejected with exit code CONFIG and
a one-line error naming the key, before a single module (let alone a model) is built."""
import argparse
import tarfile

import pytest
import torch

import clipav2
from clipav2 import exitcodes
from clipav2.commands import train as train_cmd

BASE = """\
model: {name: tiny}
run_dir: RUN
data: {train: SHARD}
parallel: {micro_batch: 8}
stages:
  - {name: pretrain, image_size: 16, text_len: 8, text_reduction: syntax, samples: 64, global_batch: 16}
  - {name: finetune, image_size: 32, image_reduction: random, image_mask_ratio: 0.25, samples: 64, global_batch: 16}
"""

# (overrides, the key the one-line error must name)
CASES = [
    (["model.name=ViT-X-1"], "model.name"),
    (["model.pos_embed=rope"], "model.pos_embed"),
    (["model.gelu=relu"], "model.gelu"),
    (["model.attention=flash"], "model.attention"),
    (["model.checkpointing=every_0"], "model.checkpointing"),
    (["model.ln_eps=2"], "model.ln_eps"),
    (["model.compile=maybe"], "model.compile"),
    (["model.width=3"], "model.width"),
    (["parallel.strategy=horovod"], "parallel.strategy"),
    (["parallel.zero_stage=4"], "parallel.zero_stage"),
    (["parallel.precision=fp16"], "parallel.precision"),
    (["parallel.micro_batch=0"], "parallel.micro_batch"),
    (["parallel.micro_batch=3"], "stages.pretrain.global_batch"),
    (["parallel.grad_accum=3"], "stages.pretrain.global_batch"),
    (["parallel.deepspeed_config=/nonexistent/ds.json"], "parallel.deepspeed_config"),
    (["parallel.timeout_minutes=0"], "parallel.timeout_minutes"),
    (["data.workers=-1"], "data.workers"),
    (["data.shuffle_buffer=lots"], "data.shuffle_buffer"),
    (["data.vocab=/nonexistent/vocab.txt"], "data.vocab"),
    (["data.train=/nonexistent/{000..003}.tar"], "data.train"),
    (["data.train=null"], "data.train"),
    (["data.eval=/nonexistent/eval-{0..1}.tar"], "data.eval"),
    (["data.eval_classnames=/nonexistent/classes.txt"], "data.eval_classnames"),
    (["checkpoint.every_steps=0"], "checkpoint.every_steps"),
    (["checkpoint.every_minutes=-1"], "checkpoint.every_minutes"),
    (["log.every_steps=0"], "log.every_steps"),
    (["eval.batch_size=0"], "eval.batch_size"),
    (["faults.max_consecutive_skips=0"], "faults.max_consecutive_skips"),
    (["cost.budget_usd=-5"], "cost.budget_usd"),
    (["cost.stop_fraction=1.5"], "cost.stop_fraction"),
    (["cost.price_per_gpu_hour=cheap"], "cost.price_per_gpu_hour"),
    (["seed=abc"], "seed"),
    (["run_dir=[1, 2]"], "run_dir"),
    (["stages.pretrain.image_size=30"], "stages.pretrain.image_size"),
    (["stages.pretrain.image_reduction=crop"], "stages.pretrain.image_reduction"),
    (["stages.finetune.image_mask_ratio=1.0"], "stages.finetune.image_mask_ratio"),
    (["stages.finetune.image_mask_ratio=-0.1"], "stages.finetune.image_mask_ratio"),
    (["stages.pretrain.image_mask_ratio=0.5"], "stages.pretrain.image_mask_ratio"),
    (["stages.finetune.image_reduction=grid", "stages.finetune.grid_window=3"], "stages.finetune.grid_window"),
    (["stages.pretrain.text_len=1"], "stages.pretrain.text_len"),
    (["stages.pretrain.text_reduction=nouns"], "stages.pretrain.text_reduction"),
    (["stages.pretrain.tokenizer_mode=clip"], "stages.pretrain.tokenizer_mode"),
    (["stages.pretrain.samples=0"], "stages.pretrain.samples"),
    (["stages.pretrain.samples=8"], "stages.pretrain.samples"),
    (["stages.pretrain.global_batch=12"], "stages.pretrain.global_batch"),
    (["stages.pretrain.micro_batch=0"], "stages.pretrain.micro_batch"),
    (["stages.pretrain.lr_base=0"], "stages.pretrain.lr_base"),
    (["stages.pretrain.warmup_steps=100"], "stages.pretrain.warmup_steps"),
    (["stages.pretrain.betas=[0.9, 1.2]"], "stages.pretrain.betas"),
    (["stages.pretrain.betas=[0.9]"], "stages.pretrain.betas"),
    (["stages.pretrain.eps=0"], "stages.pretrain.eps"),
    (["stages.pretrain.weight_decay=-0.1"], "stages.pretrain.weight_decay"),
    (["stages.pretrain.grad_clip=0"], "stages.pretrain.grad_clip"),
    (["stages.pretrain.augment.crop_scale=[0.5, 0.2]"], "stages.pretrain.augment.crop_scale"),
    (["stages.pretrain.augment.grayscale_p=2"], "stages.pretrain.augment.grayscale_p"),
    (["stages.pretrain.eval_transform=squash"], "stages.pretrain.eval_transform"),
    (["stages.pretrain.init_from=/nonexistent/w.safetensors"], "stages.pretrain.init_from"),
    (["stages.pretrain.foo=1"], "stages.pretrain.foo"),
    (["stages.finetune.name=pretrain"], "stages.pretrain.name"),
    (["stages.nosuch.samples=3"], "stages.nosuch"),
    (["stages=3"], "stages"),
    (["nonsense"], "nonsense"),
]


@pytest.fixture
def recipe(tmp_path):
    shard = tmp_path / "shard-0.tar"
    with tarfile.open(shard, "w"):
        pass
    path = tmp_path / "recipe.yaml"
    path.write_text(BASE.replace("RUN", str(tmp_path / "run")).replace("SHARD", str(shard)))
    return path


@pytest.fixture(autouse=True)
def nothing_is_built(monkeypatch):
    """Any nn.Module construction (a model, a loss) or create_model call fails the test loudly."""

    def refuse(*a, **k):
        raise AssertionError("a module was built before the config was rejected")

    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    monkeypatch.setattr(clipav2, "create_model", refuse, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)


def _run(config, overrides=(), stage=None):
    args = argparse.Namespace(config=str(config), overrides=list(overrides), stage=stage)
    return train_cmd.main(args)


def _assert_one_line_naming(capsys, rc, key):
    err = capsys.readouterr().err.strip()
    assert rc == exitcodes.CONFIG, err
    assert "\n" not in err, err
    assert key in err, err


def test_at_least_fifty_cases():
    assert len(CASES) >= 50


@pytest.mark.parametrize("overrides, key", CASES, ids=[" ".join(o) for o, _ in CASES])
def test_malformed_override(recipe, capsys, overrides, key):
    _assert_one_line_naming(capsys, _run(recipe, overrides), key)


def test_unknown_stage_flag(recipe, capsys):
    _assert_one_line_naming(capsys, _run(recipe, stage="nosuch"), "stages")


def test_single_strategy_under_a_two_rank_launcher(recipe, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    _assert_one_line_naming(capsys, _run(recipe), "parallel.strategy")


def test_half_a_launcher_environment(recipe, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    _assert_one_line_naming(capsys, _run(recipe), "RANK")


@pytest.mark.parametrize(
    "text, key",
    [("model: [\n", "config"), ("- just\n- a list\n", "config"), ("stages: {pretrain: {}}\n", "stages")],
)
def test_malformed_file(tmp_path, capsys, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _assert_one_line_naming(capsys, _run(path), key)


def test_missing_file(tmp_path, capsys):
    _assert_one_line_naming(capsys, _run(tmp_path / "absent.yaml"), "config")


def test_the_base_recipe_is_valid(recipe, monkeypatch):
    from clipav2.config import load_config

    cfg = load_config(recipe, world_size=1, check_data=True)
    assert [s.name for s in cfg.stages] == ["pretrain", "finetune"]
