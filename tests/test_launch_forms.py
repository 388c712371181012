"""`bash launch/h14.sh` and `deepspeed --num_gpus 2 launch/h14.sh`, for real on 2 CPU ranks
(DeepSpeed ZeRO-1, gloo): the same environment variables must give the same run, the resolved
config and the trained weights alike."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from support import free_port, small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # multi-process or a whole training run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    data = small_demo(tmp_path_factory)
    root = tmp_path_factory.mktemp("forms")
    recipe = tiny_recipe(root / "r.yaml", data, root / "unused", **{"stages.pretrain.samples": 32, "parallel.micro_batch": 8})
    raw = yaml.safe_load(recipe.read_text())
    raw["stages"] = raw["stages"][:1]  # one stage: each form pays DeepSpeed's start-up once
    recipe.write_text(yaml.safe_dump(raw, sort_keys=False))
    deepspeed = str(Path(sys.executable).parent / "deepspeed")
    forms = {"bash": ["bash", "launch/h14.sh"], "deepspeed": [deepspeed, "--num_gpus", "2", "launch/h14.sh"]}
    out = {}
    for name, argv in forms.items():
        port = free_port()
        if name == "deepspeed":
            argv = [*argv[:3], "--master_port", port, *argv[3:]]
        env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE")}
        env.update(CONFIG=str(recipe), RUN_DIR=str(root / name), DATA=str(data / "train"), STRATEGY="deepspeed",
                   ZERO_STAGE="1", NUM_GPUS="2", DEVICE="cpu", MASTER_PORT=port, DS_ACCELERATOR="cpu",
                   OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        proc = subprocess.run([*argv, "eval.at_stage_end=false", "log.every_steps=1"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
        out[name] = (proc, root / name)
    return out


@pytest.mark.parametrize("form", ["bash", "deepspeed"])
def test_each_form_trains_the_recipe(runs, form):
    proc, run_dir = runs[form]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (cfg["parallel"]["strategy"], cfg["parallel"]["zero_stage"]) == ("deepspeed", 1)  # STRATEGY, ZERO_STAGE
    assert cfg["run_dir"] == str(run_dir) and cfg["data"]["train"].endswith("/train")  # RUN_DIR, DATA
    assert "2 ranks" in proc.stdout and (run_dir / "pretrain.safetensors").is_file()


def test_both_forms_are_the_same_run(runs):
    (_, a), (_, b) = runs["bash"], runs["deepspeed"]
    config = [yaml.safe_load((d / "config.yaml").read_text()) for d in (a, b)]
    for c in config:
        c.pop("run_dir")
    assert config[0] == config[1]
    wa, wb = load_file(str(a / "pretrain.safetensors")), load_file(str(b / "pretrain.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
