"""The shell commands in README.md and docs/*.md, as a reader copies them. Every `clipav2 ...` line
must parse with the command's own parser (a synopsis's [optional] parts dropped); the ones that
run offline on a CPU are run, at tiny size where they train (`RUN`); the others are listed in
`SKIP` with the reason. A command in neither table, or a table entry no longer in the docs,
fails the test, so the tables follow the docs."""
import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from clipav2 import cli
from test_train_support import ENV, small_demo

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMAND_WORDS = ("clipav2", "clip_benchmark", "python", "python3", "pip", "mkdir", "sbatch", "deepspeed", "launch/")

GPU = "needs GPUs and the full data set (8 x 80 GB, LAION/DataComp shards)"
H14_RUN = "needs a trained ViT-H/14 checkpoint (runs/h14) and ImageNet"
SYNOPSIS = "a usage synopsis (placeholders in capitals), parsed only"
SKIP = {
    'python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.14.1 torchvision==0.29.1 && pip install -e .[dev,deepspeed]':
        "installs from the package index (network)",
    "python -m pytest -q -x": "the whole suite, this test included",
    "python -m nltk.downloader -d ~/nltk_data averaged_perceptron_tagger_eng": "downloads NLTK data (network)",
    "clipav2 compare configs/demo.yaml configs/demo_fullres.yaml --plot demo_vs_fullres.png":
        "trains both demo recipes to the end (minutes of CPU); tests/test_cost_accuracy.py runs compare at tiny size",
    "clipav2 train configs/h14.yaml data.train=/data/{00000..41407}.tar parallel.strategy=fsdp": GPU,
    "clipav2 eval configs/h14.yaml --checkpoint runs/h14/finetune336.safetensors": H14_RUN,
    "clipav2 eval configs/h14.yaml --checkpoint runs/h14/checkpoints/pretrain": H14_RUN,
    "clipav2 eval configs/h14.yaml --checkpoint RUN_DIR/pretrain.safetensors --data /data/imagenet/val": H14_RUN,
    "clipav2 eval configs/h14.yaml --checkpoint RUN_DIR/pretrain.safetensors --data /data/imagenet/val eval.protocol=open_clip": H14_RUN,
    "clipav2 convert --from open_clip open_clip_model.safetensors ours.safetensors --model ViT-H-14-CLIPA":
        "needs open_clip's ViT-H/14 weights (network, 4 GB); tests/test_convert.py converts a tiny model",
    "clipav2 convert --to open_clip runs/h14/finetune336.safetensors h14-folder": H14_RUN,
    "clipav2 budget runs/h14 --out report.md --plot report.png --html report.html [--price 2.5]":
        SYNOPSIS + "; needs an H/14 run directory (tests/test_cost_report.py renders a tiny one)",
    "clipav2 data shards captions.csv OUT [--resize PX] [--quality 90] [--shard-size 10000] [--workers N]": SYNOPSIS,
    "clipav2 data demo OUT [--seed 0] [--train 20000] [--eval 1200] [--image-size 64]": SYNOPSIS,
    "clipav2 data inspect SHARDS [--config C --stage S] [--vocab V] [--json]": SYNOPSIS,
    "clipav2 bench CONFIG [key=value ...] --stage NAME [--steps N] [--warmup W] [--micro-batch B|auto] [--grad-accum A] "
    "[--strategy S] [--compile] [--attention BACKEND] [--checkpointing POLICY] [--device cpu|cuda] [--data] "
    "[--baseline open_clip] [--peak-tflops P] [--json]": SYNOPSIS,
    "clipav2 text preview --reduction all --length 8 CAPTION...": SYNOPSIS + "; run below with a caption",
    "clipav2 text preview --reduction random --length 8 --seed 3 --json CAPTION...": SYNOPSIS,
    "DATA=/data/laion/{00000..41407}.tar RUN_DIR=runs/h14 launch/h14.sh": GPU,
    "DATA=... RUN_DIR=runs/h14 deepspeed launch/h14.sh": GPU,
    "DATA=... sbatch --nodes 8 launch/slurm/h14.sbatch": "needs a SLURM cluster",
    "DATA=/data/datacomp1b/{00000000..00140089}.tar EVAL_DATA=/data/imagenet/val launch/h14.sh": GPU,
    "STRATEGY=deepspeed launch/h14.sh": GPU,
    "DATA=/data/laion/{00000..41407}.tar deepspeed launch/h14.sh": GPU,
    "DATA=... STRATEGY=deepspeed ZERO_STAGE=3 deepspeed --num_gpus 4 launch/g14.sh stages.pretrain.warmup_steps=500": GPU,
    "mkdir -p runs": "cluster set-up: a directory on the nodes' shared file system",
    "clip_benchmark eval --model_type open_clip --model local-dir:demo-folder --dataset wds/demo --dataset_root demo-wds --no_amp":
        "tests/test_clip_benchmark.py runs it on an exported tiny model (it is in the dev extra only)",
    "DATA=/data/datacomp1b/{00000000..00140089}.tar EVAL_DATA=/data/imagenet/val sbatch --nodes=4 --partition=gpu "
    "--account=me launch/slurm/h14.sbatch": "needs a SLURM cluster",
}

# The demo recipe at tiny size: the tests' tiny model, a few steps per stage, its generated data
# set replaced by a small one written beforehand into RUN_DIR/demo_data.
TINY_DEMO = ["model.name=tiny", "data.workers=0", "data.shuffle_buffer=64", "parallel.micro_batch=16",
             "eval.batch_size=72", "eval.every_samples=0", "log.tensorboard=false",
             "stages.pretrain.image_size=16", "stages.pretrain.samples=32", "stages.pretrain.global_batch=16",
             "stages.pretrain.warmup_steps=1", "stages.finetune.image_size=32", "stages.finetune.samples=32",
             "stages.finetune.global_batch=16", "stages.finetune.warmup_steps=1", "stages.finetune.text_len=16"]
# command -> how it runs here: "as is"; "tiny demo" (TINY_DEMO and run_dir appended); "after the
# tiny demo" (in the same test, in the docs' order, on its run directory: runs/demo and the
# outputs below moved under tmp, TINY_DEMO appended to a command that reads a recipe); or "launch
# dry run" (bash, with DATA=... and the recipe's data paths pointing at small local files)
DEMO_OUTPUTS = ("demo-folder", "demo-wds")
RUN = {
    "clipav2 train configs/demo.yaml": "tiny demo",
    "clipav2 convert --to open_clip runs/demo/finetune.safetensors demo-folder": "after the tiny demo",
    "clipav2 data benchmark runs/demo/demo_data/eval demo-wds --classnames demo --templates demo": "after the tiny demo",
    "clipav2 eval configs/demo.yaml --checkpoint runs/demo/finetune.safetensors eval.protocol=open_clip": "after the tiny demo",
    "clipav2 plan configs/h14.yaml": "as is",
    "clipav2 plan configs/h14.yaml --gpu h100 --gpus 64 --mfu 0.45": "as is",
    "clipav2 plan configs/h14.yaml --gpu h100 --gpus 64 --samples-per-s 2900 --price 2.5 --json": "as is",
    "clipav2 plan configs/h14.yaml --memory --gpu h100 --gpus 8": "as is",  # ~25 s: the tracker over reduced models
    "clipav2 models": "as is",
    'clipav2 text preview --reduction syntax --length 8 "A fluffy white puppy sleeping on a red blanket"': "as is",
    'clipav2 text preview --reduction all --length 8 "A photo of an unbelievably gorgeous sunset over the Mediterranean sea"':
        "as is",
    "DRY_RUN=1 DATA=... launch/h14.sh": "launch dry run",
    "DRY_RUN=1 STRATEGY=deepspeed ZERO_STAGE=3 launch/g14.sh stages.pretrain.samples=655360000": "launch dry run",
}


def _is_command(line: str) -> bool:
    words = line.split()
    if not words or re.match(r"^clipav2 [\w-]+:", line):  # an error message quoted in the docs
        return False
    first = next((w for w in words if not re.match(r"^[A-Z_]+=", w)), "")
    return first.startswith(COMMAND_WORDS)


def doc_commands() -> dict[str, dict]:
    """{command (its words re-joined, comment dropped): {"docs": files, "output": lines shown after it}}
    from fenced blocks that are shell (bash, sh, console, or unlabelled with command lines)."""
    found = {}
    for path in DOCS:
        for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", path.read_text(), re.M | re.S):
            if lang not in ("", "bash", "sh", "shell", "console"):
                continue
            lines = body.replace("\\\n", " ").splitlines()
            prompted = any(line.startswith("$ ") for line in lines)
            command = None
            for line in lines:
                if prompted and not line.startswith("$ "):
                    if command:
                        found[command]["output"].append(line)
                    continue
                line = line[2:] if prompted else line
                if line[:1].isspace() and command:  # a synopsis continued on an indented line
                    key = command + " " + " ".join(line.split())
                    found[key] = found.pop(command)
                    command = key
                    continue
                if not _is_command(line):
                    command = None
                    continue
                command = _key(line)
                found.setdefault(command, {"docs": set(), "output": []})["docs"].add(path.name)
    return found


def _key(line: str) -> str:
    """The line's words, quotes kept only where a word has a space, the comment dropped."""
    return " ".join(shlex.quote(w) if " " in w else w for w in shlex.split(line, comments=True)).replace("'", '"')


def test_every_command_is_run_or_skipped_with_a_reason():
    commands = doc_commands()
    unknown = [c for c in commands if c not in RUN and c not in SKIP]
    assert not unknown, f"commands in the docs that neither RUN nor SKIP lists: {unknown}"
    stale = [c for c in (*RUN, *SKIP) if c not in commands]
    assert not stale, f"RUN/SKIP entries no longer in the docs: {stale}"
    assert all(SKIP[c] for c in SKIP)


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    module, help_ = cli.COMMANDS[argv[0]]
    parser = argparse.ArgumentParser(prog=f"clipav2 {argv[0]}", description=help_)
    importlib.import_module(f"clipav2.commands.{module}").add_arguments(parser)
    return parser


@pytest.mark.parametrize("command", sorted(c for c in doc_commands() if c.startswith("clipav2 ")))
def test_every_clipav2_command_parses(command):
    """What argparse says to the reader (a missing --checkpoint, an unknown option), without
    running anything; a synopsis's [optional] parts are left out."""
    while re.search(r"\[[^\[\]]*\]", command):
        command = re.sub(r"\s*\[[^\[\]]*\]", "", command)
    argv = shlex.split(command)[1:]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cli._parse(_parser(argv), argv[1:])
        except SystemExit:
            pytest.fail(f"`{command}` does not parse: {err.getvalue().strip().splitlines()[-1]}")


def _run_clipav2(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    assert code == 0, f"`clipav2 {shlex.join(argv)}` exited {code}: {out.getvalue()[-2000:]}"
    return out.getvalue()


def _tiny_demo_run_dir(tmp_path, tmp_path_factory) -> Path:
    """A run directory whose demo_data is the tests' small generated set (the demo writes 20,000 scenes)."""
    data = small_demo(tmp_path_factory)
    run_dir = tmp_path / "demo"
    (run_dir / "demo_data").mkdir(parents=True)
    for split in ("train", "eval"):
        (run_dir / "demo_data" / split).symlink_to(data / split)
    return run_dir


def _launch_dry_run(command: str, tmp_path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir(exist_ok=True)
    for i in range(2):
        (shards / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "val").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), DATA=f"{shards}/{{00000..00001}}.tar", EVAL_DATA=str(tmp_path / "val"),
               RUN_DIR=str(tmp_path / "run"), **ENV)
    command = command.replace("DATA=...", f"DATA={shlex.quote(env['DATA'])}")
    r = subprocess.run(["bash", "-c", command], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"`{command}` exited {r.returncode}: {r.stderr[-2000:]}"
    assert "clipav2 train" in r.stdout and "data.train=" in r.stdout, r.stdout


def _after_the_demo(command: str, run_dir: Path, tmp_path) -> list[str]:
    argv = [w.replace("runs/demo", str(run_dir)) for w in shlex.split(command)[1:]]
    argv = [str(tmp_path / w) if w in DEMO_OUTPUTS else w for w in argv]
    return argv + (TINY_DEMO + [f"run_dir={run_dir}"] if any(w.endswith(".yaml") for w in argv) else [])


@pytest.mark.parametrize("command", sorted(c for c in RUN if RUN[c] != "after the tiny demo"))
def test_documented_command_runs(command, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(REPO)
    how = RUN[command]
    if how == "launch dry run":
        return _launch_dry_run(command, tmp_path)
    argv = shlex.split(command)[1:]
    if how == "tiny demo":
        run_dir = _tiny_demo_run_dir(tmp_path, tmp_path_factory)
        _run_clipav2([*argv, *TINY_DEMO, f"run_dir={run_dir}"])
        assert (run_dir / "finetune.safetensors").is_file()
        for after in (c for c in doc_commands() if RUN.get(c) == "after the tiny demo"):  # the docs' order
            _run_clipav2(_after_the_demo(after, run_dir, tmp_path))
        return
    out = _run_clipav2(argv)
    shown = doc_commands()[command]["output"]
    if shown:  # the docs show its output: it must be what the command prints
        assert out.splitlines() == shown
