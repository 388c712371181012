"""The command line as a user meets it: overrides anywhere, --version, the plan of a CPU recipe,
one-line errors where a traceback used to be, a pipe closed early, pytest's own summary line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import clipav2
from clipav2 import cli
from clipav2.models.convert import save_model

from support import ENV, small_demo, tiny_recipe

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


def clipav2_cmd(*args, stdout=subprocess.PIPE):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **{k: os.environ.get(k, v) for k, v in ENV.items()})
    return subprocess.run([sys.executable, "-m", "clipav2", *args], cwd=REPO, env=env, stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=300)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_version():
    r = clipav2_cmd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"clipav2 {clipav2.__version__}"


def test_overrides_after_options(capsys):
    assert cli.main(["plan", DEMO, "--json", "stages.pretrain.samples=64000", "--gpu", "h100", "stages.pretrain.warmup_steps=5"]) == 0
    doc = json.loads(capsys.readouterr().out)
    pre = doc["stages"][0]
    assert (pre["samples"], pre["warmup_steps"], doc["gpu"]) == (64000, 5, "h100")


def test_plan_of_a_cpu_recipe_prints_the_schedule_and_says_why_no_cost(capsys):
    assert cli.main(["plan", DEMO]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "plan for demo" and out[2].split()[0] == "pretrain" and out[3].split()[0] == "finetune"
    assert "USD" not in out[1]
    assert out[-1].startswith("cost left out: cpu has no peak FLOP/s") and "--samples-per-s" in out[-1]
    assert cli.main(["plan", DEMO, "--samples-per-s", "100", "--gpus", "1"]) == 0  # measured rate: costed
    assert "USD" in capsys.readouterr().out


def test_train_a_later_stage_on_a_fresh_run_dir_is_one_line_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "fresh"
    r = clipav2_cmd("train", DEMO, "--stage", "finetune", f"run_dir={run_dir}")  # override after the option
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "--stage finetune" in line and "pretrain.safetensors does not exist" in line
    assert not run_dir.exists()


def test_bench_data_on_the_demo_recipe_names_the_missing_set(tmp_path):
    r = clipav2_cmd("bench", DEMO, "--data", f"run_dir={tmp_path}")
    assert r.returncode == 2
    assert f"clipav2 data demo {tmp_path}/demo_data" in one_line(r.stderr)


def test_eval_errors_are_one_line(tmp_path):
    tiny = tmp_path / "tiny.safetensors"
    save_model(clipav2.create_model("tiny"), tiny)
    shard = tmp_path / "__0_0.distcp"
    shard.write_bytes(b"\0" * 64)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "cat").mkdir()
    cases = {str(tiny): "holds a 'tiny' model, not 'demo'", str(shard): "is a shard of a sharded checkpoint",
             str(tmp_path / "missing.safetensors"): "no such file"}
    for checkpoint, needle in cases.items():
        r = clipav2_cmd("eval", DEMO, "--checkpoint", checkpoint, f"data.eval={tmp_path / 'val'}")
        assert r.returncode == 2 and needle in one_line(r.stderr)


def test_a_pipe_closed_early_ends_quietly():
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line, as `| head` is after its lines
    try:
        r = clipav2_cmd("models", "--json", stdout=write)
    finally:
        os.close(write)
    assert r.returncode == 141 and r.stderr == ""


@pytest.mark.slow
def test_a_run_without_eval_data_says_so_at_start(tmp_path_factory, tmp_path):
    data = small_demo(tmp_path_factory)
    recipe = tiny_recipe(tmp_path / "r.yaml", data, tmp_path / "run", **{"stages.pretrain.samples": 16})
    r = clipav2_cmd("train", str(recipe), "--stage", "pretrain", "data.eval=null", "log.tensorboard=false")
    assert r.returncode == 0, r.stderr[-2000:]
    first = r.stdout.splitlines()[0]
    assert first == "note: no data.eval or data.retrieval in the config: this run will not evaluate"
    assert not (tmp_path / "run" / "eval.jsonl").exists() or not (tmp_path / "run" / "eval.jsonl").read_text()


def test_pytest_prints_its_summary_line(tmp_path):
    test = tmp_path / "test_one.py"
    test.write_text("def test_one():\n    pass\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-c", str(REPO / "pyproject.toml"),
                        "--rootdir", str(REPO), "-p", "no:cacheprovider", str(test)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0
    assert "1 passed" in r.stdout.strip().splitlines()[-1]


@pytest.mark.slow  # a whole training run
def test_a_cpu_run_says_its_threads_and_expected_time_and_raises_no_alarm(tmp_path_factory, tmp_path):
    """No "ERROR" anywhere in a good run (the kernel probe's profiler used to print one on every
    CPU run); the threads in use (OMP_NUM_THREADS=1 here) before the first step; after the first
    logged steps the expected time, at the FLOP rate the metrics record measured."""
    data = small_demo(tmp_path_factory)
    recipe = tiny_recipe(tmp_path / "r.yaml", data, tmp_path / "run", **{"stages.pretrain.samples": 96})
    r = clipav2_cmd("train", str(recipe), "--stage", "pretrain", "log.progress=true", "log.tensorboard=false")
    assert r.returncode == 0, r.stderr[-2000:]
    lines = (r.stdout + r.stderr).splitlines()
    assert not [line for line in lines if "ERROR" in line], r.stdout + r.stderr
    compute = next(line for line in lines if line.startswith("compute: "))
    assert compute.startswith(f"compute: 1 rank on cpu ({os.cpu_count()} cores, 1 threads), threads set by OMP_NUM_THREADS=1")
    expected = next(line for line in lines if line.startswith("expected: ~"))
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    plan = json.loads(clipav2_cmd("plan", str(recipe), "--json").stdout)["stages"][0]
    rate = first["samples_per_s"] * plan["train_flops_per_sample"] / 1e9
    assert f" at {rate:,.2f} GFLOP/s, measured on steps 1-2 of pretrain" in expected, (expected, rate)
    assert first["seconds_to_go"] >= first["stage_seconds_to_go"] > 0
    assert lines.index(compute) < lines.index(expected) < next(i for i, l in enumerate(lines) if l.startswith("[pretrain] step "))
