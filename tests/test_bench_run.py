"""`clipav2 bench` end to end on the CPU with the tiny model: `--compile` and `--checkpointing`
give the loss of the plain step, the baseline row is open_clip's, bad flags are refused."""
import json

import pytest
import torch

from clipav2.cli import main as cli
from clipav2.parallel.env import World
from clipav2.perf.bench import BenchOptions, bench_ours, load_bench_config

TINY = """
model: {name: tiny}
seed: 3
stages:
  - {name: pretrain, image_size: 32, text_len: 9, samples: 64, global_batch: 8,
     image_reduction: random, image_mask_ratio: 0.5}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return str(path)


def _loss(recipe, **flags) -> list:
    opts = BenchOptions(steps=2, warmup=1)
    cfg, stage = load_bench_config(recipe, [], None, flags, 8, opts, 1)
    row = bench_ours(cfg, stage, World(), opts)
    assert row.error is None
    return row.loss


@pytest.fixture(scope="module")
def threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: identical reduction order for every variant
    yield
    torch.set_num_threads(old)


def test_switches_keep_the_loss(recipe, threads):
    # the loss of the third step: two optimizer updates have happened, so gradients agree too
    plain = _loss(recipe)
    assert plain == pytest.approx(_loss(recipe, checkpointing="all"), abs=1e-6)
    assert plain == pytest.approx(_loss(recipe, checkpointing="every_2"), abs=1e-6)
    assert plain == pytest.approx(_loss(recipe, compile=True, checkpointing="every_2"), rel=1e-4)


def test_cli_prints_both_trainers_and_their_ratio(recipe, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --device cpu sets it; undo after the test
    code = cli(["bench", recipe, "--steps", "2", "--warmup", "1", "--micro-batch", "8", "--device", "cpu",
                "--baseline", "open_clip", "--json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trainer"] for r in rows] == ["clipav2", "open_clip"]
    for r in rows:
        assert r["error"] is None and r["samples_per_s"] > 0 and r["mfu"] is None  # CPU: TFLOP/s only
        assert r["micro_batch"] == 8 and r["kept_image_tokens"] == 8 and r["peak_memory_gib"] > 0
        assert r["flags"]["precision"] == "fp32"
    assert rows[0]["train_flops_per_sample"] == rows[1]["train_flops_per_sample"]


@pytest.mark.slow
def test_micro_batch_auto_on_the_cpu_reaches_the_limit(recipe, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # nothing runs out of memory here, so the search doubles up to --search-max
    assert cli(["bench", recipe, "--steps", "1", "--warmup", "0", "--micro-batch", "auto", "--search-max", "16",
                "--device", "cpu", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["micro_batch"] == 16


@pytest.mark.parametrize("argv, key", [
    (["--steps", "0"], "--steps"), (["--micro-batch", "many"], "--micro-batch"),
    (["--stage", "nope"], "no stage named"), (["--checkpointing", "some"], "model.checkpointing"),
])
def test_bad_flags_are_config_errors(recipe, capsys, argv, key):
    assert cli(["bench", recipe, *argv]) == 2
    assert key in capsys.readouterr().err


def test_the_baseline_is_the_same_model_size():
    # open_clip's model at our shapes has exactly our parameters (with a learned image table,
    # which open_clip always stores), so the two rows do the same work
    from clipav2.models.arch import get_arch
    from clipav2.models.flops import count_params
    from clipav2.perf.baseline import build_open_clip

    arch = get_arch("tiny", pos_embed="learned", image_size=32, context_length=9)
    model = build_open_clip(arch, 32, 9, 0.5, torch.device("cpu"))
    assert sum(p.numel() for p in model.parameters()) == count_params(arch)["total"]
