"""The signals a cluster really sends. SLURM (preemption, scancel, --signal), `timeout`, docker
stop and Kubernetes deliver SIGTERM, SIGUSR1 or SIGHUP to every process of the job, data loader
workers included, or to one process only. Whichever way it comes, the trainer finishes the step,
writes a checkpoint and exits 75, and the resumed run ends with the very weights of a run that
was never interrupted. Runs here have loader workers for training and for the periodic
evaluation, and are signalled as soon as their step-4 checkpoint exists."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipav2 import exitcodes
from support import ENV, free_port, small_demo, tiny_recipe

STEPS = 24  # 384 samples of 16; a periodic evaluation every 128 samples, with its own workers


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    return tiny_recipe(root / "r.yaml", small_demo(tmp_path_factory), root / "unused",
                       **{"stages.pretrain.samples": STEPS * 16, "checkpoint.every_steps": 4, "eval.at_stage_end": False,
                          "eval.every_samples": 128, "data.workers": 2, "log.tensorboard": False})


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    return dict(env, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore", **ENV, **extra)


def start(recipe, run, strategy="single", ranks=1, workers=2):
    """The run's processes, each rank leading a new process group with its loader workers."""
    cmd = [sys.executable, "-m", "clipav2", "train", str(recipe), "--stage", "pretrain", f"run_dir={run}",
           f"parallel.strategy={strategy}", f"data.workers={workers}", f"parallel.micro_batch={16 // ranks}"]
    if strategy == "deepspeed":
        cmd.append("parallel.zero_stage=3")
    port, procs = free_port(), []
    for rank in range(ranks):
        env = _env(RANK=str(rank), WORLD_SIZE=str(ranks), LOCAL_RANK=str(rank), MASTER_PORT=port) if ranks > 1 else _env()
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    return procs


def finish(procs, timeout=600):
    outs = []
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
        raise
    return [p.returncode for p in procs], "".join(outs)


def wait_for_checkpoint(run, procs, step=4):
    marker = run / "checkpoints" / "pretrain" / f"step_{step:08d}" / "manifest.json"
    deadline = time.time() + 600
    while not marker.exists() and all(p.poll() is None for p in procs) and time.time() < deadline:
        time.sleep(0.01)
    assert all(p.poll() is None for p in procs), finish(procs)[1][-3000:]


def saved_steps(run):
    return sorted(int(p.name.split("_")[1]) for p in (run / "checkpoints" / "pretrain").glob("step_*")
                  if (p / "manifest.json").is_file())


def assert_same_weights(a, b):
    a, b = load_file(str(a / "pretrain.safetensors")), load_file(str(b / "pretrain.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


_REFERENCE = {}


def reference(recipe, tmp_path_factory, strategy, ranks):
    """The uninterrupted run of this engine (one per module)."""
    if strategy not in _REFERENCE:
        run = tmp_path_factory.mktemp(f"ref_{strategy}") / "run"
        codes, out = finish(start(recipe, run, strategy, ranks, workers=1 if ranks > 1 else 2))
        assert codes == [0] * ranks, out[-3000:]
        _REFERENCE[strategy] = run
    return _REFERENCE[strategy]


def preempt_and_resume(recipe, tmp_path, tmp_path_factory, strategy, ranks, deliver, sig=signal.SIGTERM):
    workers = 1 if ranks > 1 else 2
    run = tmp_path / "run"
    procs = start(recipe, run, strategy, ranks, workers)
    wait_for_checkpoint(run, procs)
    deliver(procs, sig)
    codes, out = finish(procs)
    assert codes == [exitcodes.PREEMPTED] * ranks, out[-4000:]
    assert "Traceback" not in out and "killed by signal" not in out, out[-4000:]
    stopped = max(saved_steps(run))
    assert 4 < stopped < STEPS and f"after step {stopped}; checkpoint written, exit 75" in out
    codes, out = finish(start(recipe, run, strategy, ranks, workers))
    assert codes == [0] * ranks and f"resuming at step {stopped}" in out, out[-4000:]
    assert_same_weights(reference(recipe, tmp_path_factory, strategy, ranks), run)


def to_group(procs, sig):
    """timeout, a terminal, `kill -- -PGID`: the whole process group, workers included."""
    for p in procs:
        os.killpg(p.pid, sig)


def to_every_process(procs, sig):
    """slurmstepd (scancel, --signal, preemption): each process of the step, one by one."""
    import psutil

    for p in procs:
        for child in [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]:
            try:
                child.send_signal(sig)
            except psutil.NoSuchProcess:
                pass


def to_one_rank(procs, sig):
    """docker stop, Kubernetes, a user's `kill PID`: one process (here the last rank) only."""
    procs[-1].send_signal(sig)


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers(recipe, tmp_path, tmp_path_factory):
    preempt_and_resume(recipe, tmp_path, tmp_path_factory, "single", 1, to_group)


@pytest.mark.slow
@pytest.mark.parametrize("sig,deliver", [(signal.SIGUSR1, to_every_process), (signal.SIGHUP, to_one_rank)],
                         ids=["SIGUSR1-every-process", "SIGHUP-main-process"])
def test_other_preemption_signals(recipe, tmp_path, sig, deliver):
    run = tmp_path / "run"
    procs = start(recipe, run)
    wait_for_checkpoint(run, procs)
    deliver(procs, sig)
    codes, out = finish(procs)
    assert codes == [exitcodes.PREEMPTED], out[-4000:]
    assert f"preempted by {sig.name} after step {max(saved_steps(run))}; checkpoint written" in out


@pytest.mark.slow
@pytest.mark.parametrize("strategy,deliver", [("ddp", to_every_process), ("fsdp", to_every_process),
                                              ("deepspeed", to_every_process), ("ddp", to_one_rank)],
                         ids=["ddp", "fsdp", "deepspeed-zero3", "ddp-one-rank"])
def test_two_ranks_preempted_resume_bit_identical(recipe, tmp_path, tmp_path_factory, strategy, deliver):
    preempt_and_resume(recipe, tmp_path, tmp_path_factory, strategy, 2, deliver)


@pytest.mark.slow
def test_train_restores_the_previous_handlers(recipe, tmp_path):
    """A process that calls train() and goes on (a test suite, a notebook) gets its own handlers back,
    whether the run returns or raises."""
    from clipav2.config import load_config
    from clipav2 import signals
    from clipav2.train.loop import train

    mine = lambda signum, frame: None  # noqa: E731
    saved = {s: signal.signal(s, mine) for s in signals.RUN_SIGNALS}
    try:
        cfg = load_config(str(recipe), [f"run_dir={tmp_path / 'run'}", "stages.pretrain.samples=32",
                                        "eval.every_samples=0", "data.workers=0"])
        assert train(cfg, only_stage="pretrain") == 0
        assert {s: signal.getsignal(s) for s in signals.RUN_SIGNALS} == {s: mine for s in signals.RUN_SIGNALS}
        with pytest.raises(ZeroDivisionError), signals.run_signal_handlers():
            assert signal.getsignal(signal.SIGTERM) is signals._on_signal
            raise ZeroDivisionError
        assert signal.getsignal(signal.SIGTERM) is mine and signals.signal_received() is None
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_a_loader_worker_ignores_the_run_signals():
    """torch's own worker handler dies of SIGTERM, which aborts the trainer: ours ignores it."""
    from torch.utils.data import DataLoader, IterableDataset

    from clipav2.signals import RUN_SIGNALS, quiet_worker, start_workers

    class Signalled(IterableDataset):
        def __iter__(self):
            for sig in RUN_SIGNALS:
                os.kill(os.getpid(), sig)  # what a group-wide signal does to the worker
            yield torch.tensor(os.getpid())

    received = []
    saved = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in RUN_SIGNALS}
    try:
        batches = list(start_workers(DataLoader(Signalled(), batch_size=None, num_workers=1, worker_init_fn=quiet_worker)))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert len(batches) == 1 and int(batches[0]) != os.getpid() and received == []


_LEFT_RUNNING = """
import torch
from torch.utils.data import DataLoader, IterableDataset
from clipav2.signals import quiet_worker, start_workers

class Endless(IterableDataset):
    def __iter__(self):
        while True:
            yield torch.zeros(1)

it = start_workers(DataLoader(Endless(), batch_size=None, num_workers=1, persistent_workers=True,
                              worker_init_fn=quiet_worker))
next(it)
HELD = it  # held to the end, as a traceback or a suspended generator holds it
"""


def test_a_worker_left_running_does_not_keep_the_process_from_exiting(tmp_path):
    """At exit multiprocessing stops daemonic workers with SIGTERM, which ours ignore: a process
    that ends with a loader still open (an error raised mid-stage) must still exit, and quietly."""
    script = tmp_path / "left.py"
    script.write_text(_LEFT_RUNNING)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
