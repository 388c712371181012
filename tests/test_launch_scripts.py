"""The launch scripts themselves (launch/*.sh, launch/slurm/*), run as a user runs them, with
fake `scontrol`/`deepspeed` programs on PATH where a cluster would have the real ones. The
printed commands are checked against the recipe as `clipav2.config` reads it."""
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from clipav2.config import load_config

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/node.sh", "launch/h14.sh", "launch/g14.sh", "launch/common.sh", "launch/slurm/helper.sh",
           "launch/slurm/h14.sbatch", "launch/slurm/g14.sbatch"]

FAKE_SCONTROL = """#!/usr/bin/env bash
# `scontrol show hostnames LIST` -> FAKE_HOSTS, one a line; every call is logged
echo "$*" >> "$FAKE_LOG"
if [ "$1 $2" = "show hostnames" ]; then printf '%s\\n' $FAKE_HOSTS; fi
"""
FAKE_LAUNCHER = """#!/usr/bin/env bash
# stands in for a launcher that must never start: records that it did
echo "$0 $*" >> "$FAKE_LOG"
"""


def write_program(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path):
    """A bin/ dir with fake scontrol, deepspeed and srun, a log of their calls, four shard files
    and an eval folder; returns a function building the script environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_program(bin_dir / "scontrol", FAKE_SCONTROL)
    for name in ("deepspeed", "srun"):
        write_program(bin_dir / name, FAKE_LAUNCHER)
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(4):
        (shards / f"{i:05d}.tar").write_bytes(b"")
    (tmp_path / "val").mkdir()
    log = tmp_path / "calls.log"

    def env(**extra):
        e = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        e.update(PATH=f"{bin_dir}:{e['PATH']}", FAKE_LOG=str(log), RUN_DIR=str(tmp_path / "run"),
                 DATA=f"{shards}/{{00000..00003}}.tar", EVAL_DATA=str(tmp_path / "val"))
        e.update(extra)
        return e

    env.log = log
    env.shards = shards
    return env


def run(script, env, *args):
    return subprocess.run(["bash", script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def command_lines(stdout: str) -> list[list[str]]:
    return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith(("#", "export"))]


def train_args(argv: list[str]) -> list[str]:
    """What the launcher hands to `python -m clipav2`: everything after the module name."""
    return argv[argv.index("clipav2") + 1:]


@pytest.mark.parametrize("script,model", [("launch/h14.sh", "ViT-H-14-CLIPA"), ("launch/g14.sh", "ViT-bigG-14-CLIPA")])
def test_dry_run_prints_a_deepspeed_command_for_the_recipe(fakes, script, model):
    r = run(script, fakes(DRY_RUN="1", STRATEGY="deepspeed", ZERO_STAGE="3"), "stages.pretrain.warmup_steps=7")
    assert r.returncode == 0, r.stderr
    (argv,) = command_lines(r.stdout)
    assert argv[0] == "deepspeed" and "--num_gpus=8" in argv and "--module" in argv and "--no_local_rank" in argv
    args = train_args(argv)
    assert args[0] == "train" and Path(args[1]).resolve() == REPO / "configs" / Path(script).name.replace("g14", "bigg14").replace(".sh", ".yaml")
    cfg = load_config(args[1], args[2:], world_size=8, check_data=True)
    assert cfg.model.name == model
    assert (cfg.parallel.strategy, cfg.parallel.zero_stage) == ("deepspeed", 3)
    assert cfg.data.train == fakes().get("DATA") and cfg.run_dir == fakes().get("RUN_DIR")
    assert cfg.stages[0].warmup_steps == 7  # the user's override reaches the trainer, last
    assert not fakes.log.exists()  # nothing was started


def test_launchers_grow_cuda_memory_segments_unless_the_user_says_otherwise(fakes):
    assert "export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in run("launch/h14.sh", fakes(DRY_RUN="1")).stdout
    mine = run("launch/h14.sh", fakes(DRY_RUN="1", PYTORCH_CUDA_ALLOC_CONF="max_split_size_mb:512")).stdout
    assert "export PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:512" in mine


@pytest.mark.parametrize("script", ["launch/h14.sh", "launch/g14.sh"])
def test_run_by_python_as_deepspeed_does_each_rank_gets_the_same_train_arguments(fakes, script):
    """`deepspeed launch/X.sh` runs `python -u launch/X.sh --local_rank=N` per GPU with the
    launcher's variables set: that process must become the trainer bash would have started."""
    settings = dict(DRY_RUN="1", STRATEGY="deepspeed", ZERO_STAGE="3")
    outer = run(script, fakes(**settings), "stages.pretrain.warmup_steps=7")
    assert outer.returncode == 0, outer.stderr
    (launcher,) = command_lines(outer.stdout)
    rank = subprocess.run([sys.executable, "-u", script, "--local_rank=1", "stages.pretrain.warmup_steps=7"], cwd=REPO,
                          env=fakes(LOCAL_RANK="1", RANK="1", WORLD_SIZE="8", **settings),
                          capture_output=True, text=True, timeout=60)
    assert rank.returncode == 0, rank.stderr
    (trainer,) = command_lines(rank.stdout)
    assert trainer[:3] == ["python", "-m", "clipav2"]
    assert train_args(trainer) == train_args(launcher)
    assert not fakes.log.exists()  # no launcher started inside a rank


@pytest.mark.parametrize("script", ["launch/h14.sh", "launch/g14.sh"])
def test_without_strategy_the_recipe_decides_and_picks_the_launcher(fakes, script):
    """One default, the recipe's (h14.yaml: fsdp): the launcher passes no strategy of its own,
    and a recipe override of the strategy picks the launcher as STRATEGY would."""
    r = run(script, fakes(DRY_RUN="1", NUM_GPUS="4"))
    assert r.returncode == 0, r.stderr
    (argv,) = command_lines(r.stdout)
    args = train_args(argv)
    assert argv[1] == str(REPO / "launch/torchrun_keep_exitcode.py") and not any(a.startswith("parallel.") for a in args)
    recipe = load_config(args[1])
    assert load_config(args[1], args[2:], world_size=4).parallel.strategy == recipe.parallel.strategy == "fsdp"
    r = run(script, fakes(DRY_RUN="1"), "parallel.strategy=deepspeed")
    (argv,) = command_lines(r.stdout)
    assert argv[0] == "deepspeed" and argv[-1] == "parallel.strategy=deepspeed"
    r = run(script, fakes(DRY_RUN="1", ZERO_STAGE="3"))  # ZERO_STAGE would be ignored by fsdp: refused
    assert r.returncode == 2 and "ZERO_STAGE=3 applies to DeepSpeed" in r.stderr and "fsdp" in r.stderr, r.stderr


def test_fsdp_goes_through_torchrun_and_the_recipe_keeps_its_zero_stage(fakes):
    r = run("launch/h14.sh", fakes(DRY_RUN="1", STRATEGY="fsdp", NUM_GPUS="4"))
    assert r.returncode == 0, r.stderr
    (argv,) = command_lines(r.stdout)
    assert argv[:2] == ["python", str(REPO / "launch/torchrun_keep_exitcode.py")] and "--nproc_per_node=4" in argv
    assert not any(a.startswith("parallel.zero_stage") for a in argv)
    assert load_config(*(lambda a: (a[1], a[2:]))(train_args(argv)), world_size=4).parallel.strategy == "fsdp"


@pytest.mark.parametrize("settings,needle", [
    ({"DATA": "/no/such/dir/{00000..00009}.tar"}, "/no/such/dir/"),
    ({"EVAL_DATA": ""}, "data.eval"),
    ({"STRATEGY": "zero"}, "STRATEGY=zero"),
    ({"ZERO_STAGE": "4"}, "ZERO_STAGE=4"),
    ({"NUM_GPUS": "eight"}, "NUM_GPUS=eight"),
])
def test_bad_settings_stop_with_one_clear_line_before_anything_starts(fakes, settings, needle):
    r = run("launch/h14.sh", fakes(**settings))
    assert r.returncode == 2
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not fakes.log.exists()  # the (fake) deepspeed launcher never ran


SLURM_3_NODES = dict(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[07-09]", SLURM_NNODES="3",
                     FAKE_HOSTS="gpu07 gpu08 gpu09")
SLURM_4_NODES = dict(SLURM_JOB_ID="4242", SLURM_JOB_NODELIST="gpu[07-10]", SLURM_NNODES="4",
                     FAKE_HOSTS="gpu07 gpu08 gpu09 gpu10")  # the recipes' batches need a power of two


@pytest.mark.parametrize("node_id", [0, 1, 2])
def test_slurm_helper_rendezvous_for_three_nodes(fakes, node_id):
    r = run("launch/slurm/helper.sh", fakes(SLURM_NODEID=str(node_id), NUM_GPUS="8", **SLURM_3_NODES), "rendezvous")
    assert r.returncode == 0, r.stderr
    got = dict(line.split("=", 1) for line in r.stdout.split())
    assert got == {"MASTER_ADDR": "gpu07", "MASTER_PORT": "29500", "NNODES": "3", "NODE_RANK": str(node_id),
                   "NPROC_PER_NODE": "8", "WORLD_SIZE": "24"}
    assert "show hostnames gpu[07-09]" in fakes.log.read_text()


def test_slurm_job_dry_run_deepspeed_hostfile_and_one_launcher_per_node(fakes):
    r = run("launch/slurm/h14.sbatch", fakes(DRY_RUN="1", STRATEGY="deepspeed", **SLURM_4_NODES))
    assert r.returncode == 0, r.stderr
    hostfile = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("#   ")]
    assert hostfile == [[h, "slots=8"] for h in ("gpu07", "gpu08", "gpu09", "gpu10")]
    srun, *nodes = command_lines(r.stdout)
    assert srun[0] == "srun" and "--nodes=4" in srun and "--ntasks-per-node=1" in srun
    assert srun[srun.index("bash") + 1:][:2] == [str(REPO / "launch/slurm/helper.sh"), "node"]
    assert len(nodes) == 4
    for rank, argv in enumerate(nodes):
        assert argv[0] == "deepspeed" and f"--node_rank={rank}" in argv and "--no_ssh" in argv
        assert "--master_addr=gpu07" in argv and any(a.startswith("--hostfile=") for a in argv)
        cfg = load_config(train_args(argv)[1], train_args(argv)[2:], world_size=32, check_data=True)
        assert cfg.parallel.strategy == "deepspeed"


def test_slurm_job_dry_run_torchrun_c10d_on_the_first_node(fakes):
    r = run("launch/slurm/g14.sbatch", fakes(DRY_RUN="1", STRATEGY="fsdp", **SLURM_4_NODES))
    assert r.returncode == 0, r.stderr
    _, *nodes = command_lines(r.stdout)
    assert len(nodes) == 4
    for argv in nodes:
        assert {"--nnodes=4", "--nproc_per_node=8", "--rdzv_backend=c10d", "--rdzv_endpoint=gpu07:29500",
                "--rdzv_id=4242.0"} <= set(argv)


def test_slurm_job_rejects_a_bad_world_before_srun(fakes):
    # 3 nodes x 8 GPUs do not divide the recipe's global batch of 65536: refused before srun starts
    r = run("launch/slurm/h14.sbatch", fakes(**SLURM_3_NODES))
    assert r.returncode == 2 and "world size 24" in r.stderr, r.stderr
    assert "srun" not in fakes.log.read_text()


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
def test_shellcheck_passes_on_every_script():
    r = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
