"""Real training through the SLURM batch script: one fake node x 2 CPU processes (torchrun, gloo)
running the demo recipe, with fake `srun`/`scontrol` programs on PATH. SIGUSR1 is delivered the
way slurmstepd delivers `--signal=USR1@120`: to every process of the job step, not to the batch
shell. The run must checkpoint, exit 75 and requeue itself; the requeued job must resume from
that checkpoint and finish. A budget stop (76) must not requeue."""
import json
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from clipav2 import exitcodes
from clipav2.data.demo import write_demo

pytestmark = pytest.mark.slow  # multi-process or a whole training run

REPO = Path(__file__).resolve().parents[1]
JOB_ID = "31337"

FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_LOG"
if [ "$1 $2" = "show hostnames" ]; then echo localhost; fi
"""
FAKE_SRUN = """#!/usr/bin/env bash
# a one-node allocation: the single task runs here, as node 0
echo "srun $*" >> "$FAKE_LOG"
while [[ $1 == -* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1
exec "$@"
"""
# the demo recipe cut to 30 + 2 steps of 32 samples, 16 per rank; the only checkpoint the
# first run can leave is the preemption's (every_steps is beyond the stage)
OVERRIDES = ["data.demo=false", "eval.at_stage_end=false", "parallel.micro_batch=16",
             "stages.pretrain.global_batch=32", "stages.pretrain.samples=960", "stages.pretrain.warmup_steps=2",
             "stages.finetune.global_batch=32", "stages.finetune.samples=64", "stages.finetune.warmup_steps=1",
             "log.every_steps=2", "log.progress=false", "log.tensorboard=false", "checkpoint.every_steps=1000"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo(root, seed=0, n_train=512, n_eval=32, shard_size=256)
    return root / "train"


@pytest.fixture
def job(tmp_path, shards):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755 | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    log.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(log), SLURM_JOB_ID=JOB_ID, SLURM_JOB_NODELIST="localhost",
               SLURM_NNODES="1", SLURM_SUBMIT_DIR=str(REPO), CONFIG=str(REPO / "configs/demo.yaml"),
               RUN_DIR=str(tmp_path / "run"), DATA=str(shards), STRATEGY="ddp", NUM_GPUS="2", DEVICE="cpu",
               MASTER_PORT=str(20000 + os.getpid() % 20000), OMP_NUM_THREADS="1")

    def start(*extra, restart=0):
        out = open(tmp_path / f"job{restart}.out", "w")
        e = dict(env, SLURM_RESTART_COUNT=str(restart))
        proc = subprocess.Popen(["bash", "launch/slurm/h14.sbatch", *OVERRIDES, *extra], cwd=REPO, env=e,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc.output = tmp_path / f"job{restart}.out"
        return proc

    job.run_dir = tmp_path / "run"
    job.log = log
    job.start = start
    return job


def finish(proc, timeout=900):  # a guard against a hang, not a speed limit
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def signal_job_step(batch: subprocess.Popen, sig=signal.SIGUSR1) -> None:
    """What slurmstepd does with --signal=USR1: every process of the step, not the batch shell."""
    for child in psutil.Process(batch.pid).children(recursive=True):
        try:
            child.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def complete_checkpoints(run_dir: Path, stage: str) -> list[int]:
    root = run_dir / "checkpoints" / stage
    return sorted(int(p.name.split("_")[1]) for p in root.glob("step_*") if (p / "manifest.json").is_file())


def test_preempted_job_checkpoints_requeues_and_resumes(job):
    first = job.start()
    while not metrics(job.run_dir) and first.poll() is None:  # training has begun
        time.sleep(0.2)
    signal_job_step(first)
    rc = finish(first)
    out = first.output.read_text()
    assert rc == exitcodes.PREEMPTED, out[-3000:]
    (saved,) = complete_checkpoints(job.run_dir, "pretrain")
    assert 0 < saved < 30 and max(m["step"] for m in metrics(job.run_dir)) <= saved
    assert f"scontrol requeue {JOB_ID}" in job.log.read_text()
    assert not (job.run_dir / "pretrain.safetensors").exists()

    logged_before = len(metrics(job.run_dir))
    second = job.start(restart=1)
    rc = finish(second)
    out = second.output.read_text()
    assert rc == exitcodes.OK, out[-3000:]
    assert f"resuming at step {saved}" in out
    resumed = [m for m in metrics(job.run_dir)[logged_before:] if m["stage"] == "pretrain"]
    assert resumed and min(m["step"] for m in resumed) > saved and resumed[-1]["step"] == 30
    assert (job.run_dir / "finetune.safetensors").exists()
    assert job.log.read_text().count("requeue") == 1  # the finished job did not requeue


def test_budget_stop_is_not_requeued(job):
    # a budget far below the first step's cost: the guard stops at its first check
    proc = job.start("cost.budget_usd=0.0001")
    rc = finish(proc)
    out = proc.output.read_text()
    assert rc == exitcodes.BUDGET, out[-3000:]
    assert complete_checkpoints(job.run_dir, "pretrain")  # stopped with a checkpoint
    assert "requeue" not in job.log.read_text()
    assert re.search(r"budget guard.*not requeued", out)
