"""Zero-shot while training (`eval.every_samples`): the records it writes (recipe samples, GPU-hours,
dollars), the ledger charging it as eval, TensorBoard's one x-axis, and the training it leaves
untouched (the same weights as a run without it). The split over ranks is in test_eval_shared.py."""
import contextlib
import io
import json

import pytest
import torch
from safetensors.torch import load_file

from clipav2 import exitcodes
from clipav2.config import load_config
from clipav2.stage import resolve
from support import tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, demo_data):
    """The tiny recipe (4 + 4 steps of 16 samples) with and without evaluation every 32 samples;
    the second also logs to Weights & Biases, offline."""
    from clipav2.train.loop import train

    out = {}
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    for name, every in (("plain", 0), ("periodic", 32)):
        root = tmp_path_factory.mktemp(name)
        changes = {"eval.every_samples": every, "log.progress": True, "log.wandb": "clipav2-test" if every else None}
        cfg = load_config(tiny_recipe(root / "r.yaml", demo_data, root / "run", **changes), world_size=1)
        stdout, stderr = io.StringIO(), io.StringIO()  # not terminals
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            assert train(cfg) == exitcodes.OK
        out[name] = root / "run"
        out[name + "_output"] = (stdout.getvalue(), stderr.getvalue())
    mp.undo()
    return out


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_periodic_records(runs):
    evals = _jsonl(runs["periodic"] / "eval.jsonl")
    # every 32 recipe samples; the stage ends (64, 128) are the stage-end evaluations
    assert [(e["when"], e["stage"], e["step"], e["recipe_samples"]) for e in evals] == [
        ("periodic", "pretrain", 2, 32), ("stage_end", "pretrain", 4, 64),
        ("periodic", "finetune", 2, 96), ("stage_end", "finetune", 4, 128)]
    for a, b in zip(evals, evals[1:]):
        assert 0 < a["gpu_hours"] < b["gpu_hours"] and 0 < a["cost_usd"] < b["cost_usd"]
    assert all(e["n"] == 144 and e["classes"] == 36 and 0 <= e["top1"] <= e["top5"] <= 1 for e in evals)


def test_periodic_eval_changes_no_training(runs):
    for stage in ("pretrain", "finetune"):
        a = load_file(str(runs["plain"] / f"{stage}.safetensors"))
        b = load_file(str(runs["periodic"] / f"{stage}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    plain = [(e["stage"], e["top1"], e["top5"]) for e in _jsonl(runs["plain"] / "eval.jsonl")]
    ends = [(e["stage"], e["top1"], e["top5"]) for e in _jsonl(runs["periodic"] / "eval.jsonl") if e["when"] == "stage_end"]
    assert plain == ends
    losses = [(r["stage"], r["step"], r["loss"]) for r in _jsonl(runs["plain"] / "metrics.jsonl")]
    assert losses == [(r["stage"], r["step"], r["loss"]) for r in _jsonl(runs["periodic"] / "metrics.jsonl")]


def test_ledger_charges_evaluations_as_eval(runs):
    def events(run):
        return {n: s["events"]["eval"] for n, s in json.loads((run / "ledger.json").read_text())["stages"].items()}

    assert events(runs["plain"]) == {"pretrain": 1, "finetune": 1}
    assert events(runs["periodic"]) == {"pretrain": 2, "finetune": 2}


def test_tensorboard_one_axis_with_accuracy(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(runs["periodic"] / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/time" not in tags and not any(t.startswith(("pretrain/", "finetune/")) for t in tags)
    loss = [(e.step, e.wall_time) for e in acc.Scalars("train/loss")]
    # metrics every 2 steps of 16: recipe samples 32, 64 (pretrain), then 96, 128 (finetune)
    assert [s for s, _ in loss] == [32, 64, 96, 128]
    records = _jsonl(runs["periodic"] / "metrics.jsonl")
    assert [w for _, w in loss] == pytest.approx([r["time"] for r in records], abs=1e-3)  # wall time, not a float32 scalar
    evals = _jsonl(runs["periodic"] / "eval.jsonl")
    top1 = acc.Scalars("eval/zero_shot_top1")
    assert [e.step for e in top1] == [e["recipe_samples"] for e in evals]
    assert [e.value for e in top1] == pytest.approx([e["top1"] for e in evals])
    assert [e.value for e in acc.Scalars("eval/zero_shot_top5")] == pytest.approx([e["top5"] for e in evals])
    assert [(e.step, e.value) for e in acc.Scalars("train/stage")] == [(0, 0.0), (64, 1.0)]


def test_output_off_a_terminal(runs):
    from clipav2.train.metrics import progress_line

    stdout, stderr = runs["periodic_output"]
    assert "[pretrain] stage 1 of 2: 16 px images (4 patches), captions at 8 tokens (syntax mask); 4 steps x 16 samples" in stdout
    assert ("[finetune] stage 2 of 2: 32 px images, 12 of 16 patches kept (random mask 25%), captions at 16 tokens "
            "(truncated); 4 steps x 16 samples on 1 rank (1 micro-step each)") in stdout
    assert "[pretrain] step 4/4 (100%), 64 samples, loss " in stdout and ", done" in stdout  # a plain line, no bar
    assert "it/s" not in stdout + stderr and "\r" not in stdout + stderr
    assert "[finetune] zero-shot top-1" in stdout and " at 96 samples, $" in stdout
    assert "Warning" not in stdout + stderr, stderr

    rec = {"stage": "pretrain", "step": 120, "samples_seen": 15360, "loss": 2.3456, "samples_per_s": 128.0, "cost_usd": 0.0123,
           "stage_seconds_to_go": 130.2, "seconds_to_go": 3725.0}
    assert progress_line(rec, 250) == ("[pretrain] step 120/250 (48%), 15,360 samples, loss 2.346, 128.0 samples/s, "
                                       "$0.0123 spent, 2m 10s to go in this stage, ~1h 02m in all")


def _wandb_records(path):
    """The records of an offline run file (wandb's LevelDB-style log: a 7-byte ':W&B' header,
    32 KiB blocks of chunks with a 7-byte header: crc32, length, type full/first/middle/last)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        parts = data if kind in (1, 2) else parts + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record


def test_wandb_offline(runs):
    run = runs["periodic"]
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1 and (run / "wandb_id").read_text().strip() in files[0].name
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in _wandb_records(files[0]) if r.WhichOneof("record_type") == "history"]
    evals = [(h["recipe_samples"], h["eval/zero_shot_top1"], h["eval/cost_usd"]) for h in history if "eval/zero_shot_top1" in h]
    assert evals == [(e["recipe_samples"], pytest.approx(e["top1"]), pytest.approx(e["cost_usd"]))
                     for e in _jsonl(run / "eval.jsonl")]
    losses = [(h["recipe_samples"], h["train/loss"]) for h in history if "train/loss" in h]
    assert losses == [(r["recipe_samples"], pytest.approx(r["loss"])) for r in _jsonl(run / "metrics.jsonl")]


def test_schedule_by_samples_and_by_minutes(tmp_path, demo_data):
    import time

    from clipav2.eval.periodic import PeriodicEval
    from clipav2.parallel.env import World

    cfg = load_config(tiny_recipe(tmp_path / "r.yaml", demo_data, tmp_path / "run", **{"eval.every_samples": 48}))
    fine = PeriodicEval(cfg, resolve(cfg, 1), World())  # the recipe's samples: 64 before this stage, 16 a step
    assert fine.offset == 64 and [s for s in range(1, 5) if fine.due(s, at_log_step=True)] == [2]  # 96; 144 is past the end
    cfg = load_config(tiny_recipe(tmp_path / "m.yaml", demo_data, tmp_path / "run", **{"eval.every_minutes": 0.001}))
    timed = PeriodicEval(cfg, resolve(cfg, 0), World())
    assert not timed.due(1, at_log_step=True)
    time.sleep(0.07)
    assert not timed.due(1, at_log_step=False) and timed.due(1, at_log_step=True)  # read at log steps only
    assert not timed.due(4, at_log_step=True)  # the last step: the stage-end evaluation follows


def test_live_evaluation_under_bf16_params(tmp_path, demo_data):
    """single's bf16_params forward is a function, not a module: the live evaluation (periodic
    and stage-end) puts the plain module in eval mode and back, and evaluates the whole set."""
    import clipav2
    from clipav2.eval.periodic import evaluate_live
    from clipav2.parallel.env import World
    from clipav2.stage import resolve
    from clipav2.train.step import TrainStep

    cfg = load_config(tiny_recipe(tmp_path / "r.yaml", demo_data, tmp_path / "run", **{"parallel.precision": "bf16_params"}),
                      world_size=1)
    stage = resolve(cfg, 0, 1)
    engine = TrainStep(cfg, stage, World(), clipav2.create_model("tiny", image_size=stage.image_size)).engine
    assert not isinstance(engine.model, torch.nn.Module)
    result = evaluate_live(engine, cfg, stage, World())
    assert result["zero_shot"]["n"] == 144 and engine.module.training
