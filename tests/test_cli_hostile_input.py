"""Hostile and unlucky input to `clipav2 train` / `clipav2 eval`, one row per case: command-line
overrides that are not YAML, recipe bytes no YAML reader should choke on, a broken launcher
environment, a DeepSpeed config at odds with the recipe, settings that cannot be met, run
directories that cannot hold a run. Each must end in a one-line error naming what is wrong
(exit 2), never a traceback, a hang or a write outside RUN_DIR. Each case runs in its own
process under a 8 GiB address-space limit, so an expansion bomb fails there, not here."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from support import ENV, small_demo, tiny_recipe

pytestmark = pytest.mark.slow  # a process per case

# 9**9 values in 600 bytes once expanded; and a mapping nested 10,000 deep
BOMB = "seed: [&a [x, x, x, x, x, x, x, x, x], " + ", ".join(
    f"&{n} [{', '.join(['*' + p] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi")) + "]\n"
DEEP = "stage_defaults: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n"


def _bytes(name, data):
    return ("recipe", name, data)


CASES = {
    # overrides that are not one YAML scalar, or that address what is not a mapping
    "override-unclosed-list": (["seed=[1"], "seed"),
    "override-nested-mapping": (["seed=a: b: c"], "seed"),
    "override-undefined-alias": (["seed=*a"], "seed"),
    "override-newline-second-key": (["seed=1\nrun_dir: /tmp/elsewhere"], "seed"),
    "override-two-documents": (["seed=1\n---\n2"], "seed"),
    "override-python-tag": (["seed=!!python/object/apply:os.system ['true']"], "seed"),
    "override-under-a-string": (["model.name.x=1"], "model.name"),
    "override-seed-2^70": ([f"seed={2**70}"], "seed"),
    "override-4000-digit-samples": (["stages.pretrain.samples=" + "9" * 4000], "samples"),
    "override-5000-digit-seed": (["seed=" + "7" * 5000], "seed"),
    # recipe files and RUN_DIR/config.yaml
    "recipe-invalid-utf8": (_bytes("recipe", b"seed: \xff\xfe\n"), "UTF-8"),
    "recipe-nested-10000": (_bytes("recipe", DEEP.encode()), "nested deeper"),
    "recipe-alias-bomb": (_bytes("recipe", BOMB.encode()), "aliases"),
    "recipe-4000-digit-seed": (_bytes("recipe", b"seed: " + b"7" * 4000 + b"\n"), "seed"),
    "recipe-5000-digit-seed": (_bytes("recipe", b"seed: " + b"7" * 5000 + b"\n"), "digit"),
    "run-config-invalid-utf8": (_bytes("config.yaml", b"seed: \xff\n"), "config.yaml"),
    "run-config-alias-bomb": (_bytes("config.yaml", BOMB.encode()), "config.yaml"),
    "run-config-nested-10000": (_bytes("config.yaml", DEEP.encode()), "config.yaml"),
    # the launcher's environment
    "env-rank-abc": ({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK"),
    "env-world-size-0": ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
    "env-world-size-negative": ({"RANK": "0", "WORLD_SIZE": "-2"}, "WORLD_SIZE"),
    "env-rank-beyond-world": ({"RANK": "5", "WORLD_SIZE": "2"}, "RANK"),
    "env-slurm-nodelist": ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "[gpu"}, "SLURM_NODELIST"),
    "env-slurm-ntasks-abc": ({"SLURM_PROCID": "0", "SLURM_NTASKS": "two", "SLURM_NODELIST": "n1"}, "SLURM_NTASKS"),
    # a DeepSpeed config of the user's
    "deepspeed-invalid-json": (("ds", b"{not json"), "deepspeed_config"),
    "deepspeed-a-list": (("ds", b"[1, 2]"), "deepspeed_config"),
    "deepspeed-batch-size": (("ds", b'{"train_batch_size": 7}'), "train_batch_size"),
    "deepspeed-zero-stage": (("ds", b'{"zero_optimization": {"stage": 1}}'), "stage"),
    "deepspeed-not-utf8": (("ds", b'{"a": "\xff"}'), "deepspeed_config"),
    # settings that cannot be met
    "cost-gpu-bogus": (["cost.gpu=bogus"], "cost.gpu"),
    "wandb-without-login": (["log.wandb=PROJECT"], "log.wandb"),
    "prefetch-10^9": (["data.prefetch=1000000000"], "data.prefetch"),
    "image-size-unallocatable": (["stages.pretrain.image_size=1000000"], "image_size"),
    "text-len-unallocatable": (["stages.pretrain.text_len=1000000000"], "text_len"),
    # run directories
    "run-dir-empty": (["run_dir="], "run_dir"),
    "run-dir-a-file": ("run_dir_file", "run_dir"),
    "run-dir-cannot-be-created": (["run_dir=/proc/clipav2-run"], "run_dir"),
    # evaluation
    "eval-data-dev-null": ("eval_dev_null", "/dev/null"),
    "workers-24": (["data.workers=24"], "workers"),
}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from clipav2.models import create_model
    from clipav2.models.convert import save_model

    root = tmp_path_factory.mktemp("hostile")
    model = create_model("tiny")
    model.set_image_size(16)
    model.set_text_len(8)
    save_model(model, root / "tiny.safetensors", step=4, stage="pretrain")  # what `eval --checkpoint` reads
    return tiny_recipe(root / "r.yaml", small_demo(tmp_path_factory), root / "unused",
                       **{"stages.pretrain.samples": 16, "eval.at_stage_end": False, "log.tensorboard": False})


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def run_case(case, recipe, tmp_path):
    """(exit code or 'hang', stderr) of one case."""
    what, _ = CASES[case]
    run = tmp_path / "run"
    args, env = [f"run_dir={run}"], {}
    command = ["train", str(recipe)]
    if isinstance(what, list):
        args += what
    elif isinstance(what, dict):
        env, args = what, args + ["parallel.strategy=ddp", "parallel.micro_batch=8", "parallel.timeout_minutes=0.2"]
    elif what[0] == "recipe" and what[1] == "recipe":  # the recipe, changed by the bad bytes
        bad = recipe.parent / f"bad_{tmp_path.name}.yaml"
        bad.write_bytes(f"base: {recipe.name}\n".encode() + what[2])
        command = ["train", str(bad)]
    elif what[0] == "recipe":  # RUN_DIR/config.yaml of a run with progress, then damaged
        (run / "checkpoints" / "pretrain" / "step_00000001").mkdir(parents=True)
        (run / "checkpoints" / "pretrain" / "step_00000001" / "manifest.json").write_text("{}")
        (run / "config.yaml").write_bytes(what[2])
    elif what[0] == "ds":
        (tmp_path / "ds.json").write_bytes(what[1])
        args += ["parallel.strategy=deepspeed", f"parallel.deepspeed_config={tmp_path / 'ds.json'}"]
    elif what == "run_dir_file":
        (tmp_path / "file").write_text("x")
        args = [f"run_dir={tmp_path / 'file'}"]
    elif what == "eval_dev_null":
        command = ["eval", str(recipe), "--checkpoint", str(recipe.parent / "tiny.safetensors"), "--data", "/dev/null"]
    env = dict({k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "SLURM_", "WANDB"))},
               OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HOME=str(tmp_path), **ENV, **env)
    cmd = [sys.executable, "-m", "clipav2", *command, *args, "--stage", "pretrain"] if command[0] == "train" \
        else [sys.executable, "-m", "clipav2", *command]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return "hang", ""
    return p.returncode, p.stderr


def outcome(code, err, names) -> str:
    """'error' (exit 2, one line naming the setting), 'traceback', 'hang', or 'exit N'."""
    if code == "hang":
        return "hang"
    if "Traceback" in err:
        return "traceback"
    lines = [x for x in err.splitlines() if x.strip()]
    if code == 2 and lines and names.lower() in lines[-1].lower():
        return "error"
    return f"exit {code}"


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_input_is_a_one_line_error(case, recipe, tmp_path):
    code, err = run_case(case, recipe, tmp_path)
    got = outcome(code, err, CASES[case][1])
    assert got == "error", f"{case}: {got}\n{err[-2000:]}"
    assert not list(tmp_path.glob("ledger.json")) and not list(tmp_path.glob("metrics.jsonl"))  # nothing in the CWD
