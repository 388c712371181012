"""Weights out of a stage still training: the step directories that single, ddp, fsdp and DeepSpeed
ZeRO-1/2/3 write (real 2-rank CPU runs of `clipav2 train`, through tests/dist/train.py, which
also saves what the live engine gathers after each checkpoint) consolidate, on one process, to
exactly the weights the live engine gathered at that step; `clipav2 convert` and `clipav2 eval`
take them; nothing in them is unpickled beyond tensors."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipav2 import cli
from clipav2.config import load_config
from clipav2.train.checkpoint import _checksums
from clipav2.train.consolidate import find_step_dir, load_step_model

from support import free_port, small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run

TRAIN = Path(__file__).parent / "dist" / "train.py"
ENGINES = {"ddp": ["parallel.strategy=ddp"], "fsdp": ["parallel.strategy=fsdp"],
           "zero1": ["parallel.strategy=deepspeed", "parallel.zero_stage=1"],
           "zero2": ["parallel.strategy=deepspeed", "parallel.zero_stage=2"],
           "zero3": ["parallel.strategy=deepspeed", "parallel.zero_stage=3"]}
# tiny at 32 px, text 16, 3 steps of 16; a checkpoint after step 2 (the stage's end writes no step directory)
STAGE = {"stages.pretrain.image_size": 32, "stages.pretrain.text_len": 16, "stages.pretrain.samples": 48,
         "stages.pretrain.global_batch": 16, "stages.pretrain.warmup_steps": 1, "checkpoint.every_steps": 2,
         "eval.at_stage_end": False, "parallel.micro_batch": 8}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("engines")
    recipe = tiny_recipe(root / "recipe.yaml", small_demo(tmp_path_factory), root / "unused", **STAGE)
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore")
    train = ["--gather-at-save", str(recipe), "--stage", "pretrain"]
    jobs = []
    for name, flags in ENGINES.items():
        jobs += [*(["--then"] if jobs else []), *train, *flags, f"run_dir={root / name}"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
                          str(TRAIN), *jobs], env=env, capture_output=True, text=True, timeout=1200)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(TRAIN), *train, f"run_dir={root / 'single'}"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    return root, recipe


@pytest.mark.parametrize("engine", ["single", *ENGINES])
def test_a_step_consolidates_to_what_the_engine_gathered(runs, engine):
    root, recipe = runs
    step_dir = find_step_dir(root / engine / "checkpoints" / "pretrain")  # a stage's directory: its newest step
    assert step_dir.name == "step_00000002"
    model, stage, step = load_step_model(step_dir, load_config(recipe))
    assert (stage.name, step) == ("pretrain", 2)
    gathered = load_file(str(root / engine / "gathered" / "step_2.safetensors"))  # the live engine's full_state_dict
    mine = model.state_dict()
    assert mine.keys() == gathered.keys()
    assert all(torch.equal(mine[k], gathered[k]) for k in gathered)


def test_convert_and_eval_take_a_step_directory(runs, tmp_path, capsys):
    root, recipe = runs
    step_dir = root / "zero3" / "checkpoints" / "pretrain" / "step_00000002"
    gathered = load_file(str(root / "zero3" / "gathered" / "step_2.safetensors"))
    out, elsewhere = tmp_path / "mid.safetensors", tmp_path / "copied" / "step_00000002"
    # in its run directory, the run's config.yaml says which model it is
    assert cli.main(["convert", "--to", "clipav2", str(step_dir), str(out)]) == 0
    assert all(torch.equal(t, gathered[k]) for k, t in load_file(str(out)).items())
    # copied out of it, the error says what to give
    shutil.copytree(step_dir, elsewhere)
    assert cli.main(["convert", "--to", "clipav2", str(elsewhere), str(tmp_path / "x.safetensors")]) == 1
    assert "give the recipe (--config)" in capsys.readouterr().err
    assert cli.main(["convert", "--to", "clipav2", str(elsewhere), str(out), "--config", str(recipe)]) == 0
    assert all(torch.equal(t, gathered[k]) for k, t in load_file(str(out)).items())
    assert cli.main(["convert", "--to", "open_clip", str(step_dir), str(tmp_path / "oc"), "--config", str(recipe)]) == 0
    assert json.loads((tmp_path / "oc" / "open_clip_config.json").read_text())["preprocess_cfg"]["resize_mode"] == "shortest"
    capsys.readouterr()

    results = []
    for checkpoint in (step_dir, out):
        assert cli.main(["eval", str(recipe), "--checkpoint", str(checkpoint), "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out.splitlines()[-1]))
    assert results[0]["stage"] == results[1]["stage"] == "pretrain"
    assert results[0]["zero_shot"] == results[1]["zero_shot"] and results[0]["zero_shot"]["n"] == 144


class _Payload:
    def __reduce__(self):  # unpickling this would create the marker file
        return (Path.touch, (Path(os.environ["CLIPAV2_TEST_MARKER"]),))


def test_a_planted_pickle_is_refused(runs, tmp_path, monkeypatch):
    """An attacker who rewrites a shard can rewrite the manifest too: the read must still refuse."""
    root, recipe = runs
    step_dir = tmp_path / "run" / "checkpoints" / "pretrain" / "step_00000002"
    shutil.copytree(root / "zero1" / "checkpoints" / "pretrain" / "step_00000002", step_dir)
    shard = next((step_dir / "deepspeed").rglob("*model_states.pt"))
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
        state = torch.load(shard, map_location="cpu", weights_only=True)
    marker = tmp_path / "ran"
    monkeypatch.setenv("CLIPAV2_TEST_MARKER", str(marker))
    state["evil"] = _Payload()
    torch.save(state, shard)
    manifest = json.loads((step_dir / "manifest.json").read_text())
    manifest["files"] = _checksums(step_dir, None)
    (step_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="refused to load: .*Unsupported global"):
        load_step_model(step_dir, load_config(recipe))
    assert not marker.exists()
