"""Checkpoints that must be refused, through `clipav2 train` resuming them, `eval --checkpoint` and
`convert`: state files that are FIFOs (which would block a reader forever), JSON state of the wrong
shape, pickle DAG bombs (1.4 kB, 2^40 nodes when walked). Each is refused with one line and the
previous good checkpoint used; when none loads the run stops with the reasons (exit 2); a code or
library error is named as such, never taken for damage. Every subprocess is bounded by a timeout."""
import io
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch

import clipav2
from clipav2.config import load_config
from clipav2.parallel.env import World
from clipav2.stage import resolve
from clipav2.train import checkpoint as ck
from clipav2.train.step import TrainStep
from test_checkpoint_attacks import _env, _fix_manifest, _train, train_pretrain

DAG_DEPTH = 40


def dag_bomb(depth: int = DAG_DEPTH) -> bytes:
    """A pickled list whose every level holds the level below twice: tiny, 2^depth nodes as a tree."""
    node = []
    for _ in range(depth):
        node = [node, node]
    return pickle.dumps(node, protocol=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny `pretrain` stage (6 steps, checkpoints at 2 and 4)."""
    return train_pretrain(tmp_path_factory, "refusals", 96)


def _edit_json(path, change):
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _dag_byte_item(state):
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(state)).read_metadata()
    key = next(k for k in metadata.storage_data if k.fqn == "optim.param_groups.0.lr")
    info = metadata.storage_data[key]
    shard = state / info.relative_path
    buf = io.BytesIO()
    torch.save(pickle.loads(dag_bomb()), buf)  # as DCP writes a byte item (torch.save keeps the sharing)
    bomb = buf.getvalue()
    info.offset, info.length = shard.stat().st_size, len(bomb)
    with open(shard, "ab") as f:
        f.write(bomb)
    (state / ".metadata").write_bytes(pickle.dumps(metadata))


def _dag_in_metadata(state):
    from torch.distributed.checkpoint import FileSystemReader

    metadata = FileSystemReader(str(state)).read_metadata()
    metadata.planner_data = pickle.loads(dag_bomb())
    (state / ".metadata").write_bytes(pickle.dumps(metadata))


def _fifo(name):
    def make(ckpt):
        (ckpt / name).unlink()
        os.mkfifo(ckpt / name)
    return make


# (what is wrong, how the checkpoint is damaged, what the refusal names); the CRCs are rewritten
# to match, as an attacker (or a buggy tool) with write access would
CASES = {
    "strategy_json_list": (lambda c: (c / "strategy.json").write_text("[1, 2]"), "strategy.json is [1, 2]"),
    "step_count_string": (lambda c: _edit_json(c / "strategy.json", lambda m: {**m, "step_count": "4"}),
                          "step_count is '4'"),
    "extra_list": (lambda c: (c / "extra" / "rank_0.json").write_text("[]"), "extra is []"),
    "short_rng": (lambda c: _edit_json(c / "extra" / "rank_0.json",
                                       lambda e: {**e, "rng": {**e["rng"], "torch": e["rng"]["torch"][:10]}}),
                  "rng.torch"),
    "other_ranks_data": (lambda c: _edit_json(c / "extra" / "rank_0.json",
                                              lambda e: {**e, "data": {**e["data"], "rank": 1}}),
                         "data loader state of rank 1 given to rank 0"),
    "ledger_of_wrong_shape": (lambda c: _edit_json(c / "extra" / "rank_0.json",
                                                   lambda e: {**e, "ledger": {**e["ledger"], "stages": []}}),
                              "ledger stages is []"),
    "metadata_list": (lambda c: (c / "state" / ".metadata").write_bytes(pickle.dumps([1, 2])),
                      "is a list of the wrong shape"),
    "dag_byte_item": (lambda c: _dag_byte_item(c / "state"), "objects per byte of pickle"),
    "dag_in_metadata": (lambda c: _dag_in_metadata(c / "state"), "objects per byte of pickle"),
    "fingerprint_fifo": (_fifo("fingerprint.json"), "fingerprint.json is missing"),
    "manifest_fifo": (_fifo("manifest.json"), "manifest.json is not a regular file"),
}


def _damaged_copies(trained, run):
    """RUN with the good steps 2 and 4 and, above them, one damaged copy of step 4 per case."""
    recipe, good = trained
    shutil.copytree(good, run)
    (run / "pretrain.safetensors").unlink()  # the stage is not done: train resumes it
    root = run / "checkpoints" / "pretrain"
    steps = {}
    for i, (name, (damage, _)) in enumerate(CASES.items()):
        ckpt = root / f"step_{100 + i:08d}"
        shutil.copytree(root / "step_00000004", ckpt)
        if "fifo" not in name:
            damage(ckpt)
            _fix_manifest(ckpt)
        else:  # the manifest already matches (a FIFO cannot be hashed)
            damage(ckpt)
        steps[name] = ckpt.name
    return recipe, steps


@pytest.mark.slow
def test_every_damaged_state_is_refused_and_the_good_one_resumed(tmp_path, trained):
    recipe, steps = _damaged_copies(trained, tmp_path / "run")
    r = _train(recipe, tmp_path / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "resuming at step 4" in r.stdout
    for name, (_, why) in CASES.items():
        line = next((x for x in r.stderr.splitlines() if f"{steps[name]} is unusable" in x), None)
        assert line is not None, (name, r.stderr[-3000:])
        assert why in line, (name, line)
        print(name, "->", line.split(" is unusable: ")[1])
    print(f"{len(CASES)} damaged checkpoints refused, step 4 resumed")


@pytest.mark.slow
def test_checkpoints_of_which_none_loads_stop_the_run_and_fresh_starts_over(tmp_path, trained):
    recipe, steps = _damaged_copies(trained, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints" / "pretrain"
    for good in ("step_00000002", "step_00000004"):
        shutil.rmtree(root / good)
    r = _train(recipe, tmp_path / "run")
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"clipav2 train: none of the {len(CASES)} checkpoints") and "--fresh" in last
    assert all(step in last for step in steps.values())
    assert "Traceback" not in r.stderr and not (tmp_path / "run" / "pretrain.safetensors").exists()
    again = _train(recipe, tmp_path / "run", fresh=True)
    assert again.returncode == 0, again.stderr[-3000:]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "clipav2", *args], env=_env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["manifest.json", "strategy.json"])  # (fingerprint.json: in the resume test)
def test_eval_and_convert_refuse_a_fifo_state_file(tmp_path, trained, name):
    recipe, good = trained
    step = tmp_path / "step_00000004"
    shutil.copytree(good / "checkpoints" / "pretrain" / "step_00000004", step)
    _fifo(name)(step)
    for args in (["eval", str(recipe), "--checkpoint", str(step)],
                 ["convert", "--to", "clipav2", str(step), str(tmp_path / "out.safetensors"), "--config", str(recipe)]):
        r = _cli(*args)
        assert r.returncode != 0 and "Traceback" not in r.stderr, (args[0], r.stderr[-2000:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert name in r.stderr or "checkpoint step" in r.stderr, r.stderr


@pytest.mark.parametrize("where", ["clipav2.parallel.dcp_io.set_state_dict",  # ours, after DCP
                                   "clipav2.parallel.dcp_io.SafeLoadPlanner.load_bytes"])  # inside DCP, which wraps it
def test_a_code_error_while_loading_is_named_not_taken_for_damage(tmp_path, monkeypatch, where):
    cfg = load_config(None, ["stages=[{name: s}]", "stages.s.samples=64", "stages.s.global_batch=4",
                             "parallel.micro_batch=4", "parallel.precision=fp32"])
    strategy = TrainStep(cfg, resolve(cfg, 0, 1), World(), clipav2.create_model("tiny"))
    mgr = ck.CheckpointManager(tmp_path, every_steps=1, every_minutes=1e9, keep=3)
    mgr.save(strategy, 1, {"step": 1})
    mgr.save(strategy, 2, {"step": 2})

    def moved(*args, **kwargs):
        raise AttributeError("module 'torch.distributed.checkpoint' has no attribute 'moved_internal'")

    monkeypatch.setattr(where, moved)
    with pytest.raises(ck.CheckpointCodeError, match="code or library error.*AttributeError.*moved_internal"):
        mgr.resume(strategy)
    monkeypatch.undo()
    assert mgr.resume(strategy) == {"step": 2}


def test_a_pickle_dag_bomb_is_refused_quickly():
    from clipav2.safe_load import UnsafeCheckpoint, check_tree

    data = dag_bomb()
    assert len(data) < 1500
    with pytest.raises(UnsafeCheckpoint, match="objects per byte"):
        check_tree(pickle.loads(data), len(data), "the item")
    nested = pickle.dumps(torch.Size([1]))
    check_tree(pickle.loads(nested), len(nested), "a size")
    deep = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(UnsafeCheckpoint, match="nested more than"):
        check_tree(deep, 10**6, "deep")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_a_refusal_on_one_rank_is_agreed_by_all_and_they_fall_back_together(tmp_path, tmp_path_factory, strategy):
    """2 CPU ranks; the newest checkpoint is damaged for rank 1 only: under ddp its data state is
    rank 0's, under deepspeed its optimizer shard carries a pickled object. Both ranks must fall
    back to the previous checkpoint at once, not wait for each other in a collective. (Two
    torchrun runs, ~1 minute: the hang this guards against only shows with two processes.)"""
    from test_checkpoint_attacks import _Payload
    from test_train_strategies import torchrun
    from support import small_demo, tiny_recipe

    run = tmp_path / "run"
    recipe = tiny_recipe(tmp_path / "r.yaml", small_demo(tmp_path_factory), run,
                         **{"stages.pretrain.samples": 96, "checkpoint.every_steps": 2, "eval.at_stage_end": False})
    args = [f"parallel.strategy={strategy}", "parallel.micro_batch=8", "--stage", "pretrain"]
    first = torchrun(recipe, *args, timeout=600)  # DeepSpeed may JIT-build its CPU comm op first
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    (run / "pretrain.safetensors").unlink()
    newest = run / "checkpoints" / "pretrain" / "step_00000004"
    marker = tmp_path / "pwned"
    if strategy == "ddp":
        rank0 = json.loads((newest / "extra" / "rank_0.json").read_text())
        _edit_json(newest / "extra" / "rank_1.json", lambda e: {**e, "data": rank0["data"]})
    else:
        (shard,) = (newest / "deepspeed").rglob("zero_pp_rank_1_*optim_states.pt")
        torch.save({"payload": _Payload(f"touch {marker}")}, shard)
    _fix_manifest(newest)
    again = torchrun(recipe, *args, timeout=600)
    assert not marker.exists()
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    refusals = [x for x in again.stderr.splitlines() if "step_00000004 is unusable" in x]
    assert len(refusals) == 1 and "falling back to step_00000002" in refusals[0], again.stderr[-3000:]
    assert ("rank 0 given to rank 1" if strategy == "ddp" else "UnpicklingError") in refusals[0], refusals[0]
    print(strategy, "->", refusals[0].split(" is unusable: ")[1])
    assert "resuming at step 2" in again.stdout
    assert (run / "pretrain.safetensors").is_file()
