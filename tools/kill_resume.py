"""kill -9 at random moments, then resume: the final weights must equal an uninterrupted run's, bit
for bit. Two ranks of `clipav2 train` (RANK/WORLD_SIZE as torchrun sets them, gloo on the CPU),
a tiny model, a checkpoint every 2 steps. One run goes through uninterrupted; another is killed
(SIGKILL to every process of both ranks, loader workers included) at a random moment after it
makes progress, restarted, killed again, ... `--kills` times, then finished. Kills land in a step, in
the loader, or in a checkpoint write (half-written checkpoints are counted).

    python tools/kill_resume.py --strategy deepspeed --zero 3 --kills 10 --steps 200 --seed 1

Prints one line per kill (when, the last logged step, the last complete checkpoint) and the
comparison of the final weights; exits 1 if they differ."""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def recipe(path: Path, data: Path, steps: int) -> Path:
    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    raw["model"] = {"name": "tiny"}
    raw["data"].update(demo=False, train=str(data / "train"), eval=None, workers=1, shuffle_buffer=64)
    raw["parallel"].update(micro_batch=8)
    raw["log"].update(every_steps=1, progress=False, tensorboard=False)
    raw["checkpoint"].update(every_steps=2, keep=2)
    raw["eval"] = {"at_stage_end": False}
    pre = raw["stages"][0]
    pre.update(image_size=16, samples=16 * steps, global_batch=16, warmup_steps=1)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(args, cfg: Path, run: Path, log) -> list[subprocess.Popen]:
    cmd = [sys.executable, "-m", "clipav2", "train", str(cfg), "--stage", "pretrain", f"run_dir={run}",
           f"parallel.strategy={args.strategy}", f"parallel.zero_stage={args.zero}"]
    port, procs = free_port(), []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONWARNINGS="ignore",
                   PYTHONPATH=str(REPO))
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs


def kill(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    steps = [json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip().startswith("{")]
    return max(steps, default=0)


def checkpoints(run: Path) -> list[int]:
    root = run / "checkpoints" / "pretrain"
    return sorted(int(p.name[5:]) for p in root.glob("step_*")  # not step_N.tmp: a save under way
                  if p.name[5:].isdigit() and (p / "manifest.json").is_file())


def progress(run: Path) -> tuple:
    return logged_steps(run), tuple(checkpoints(run))


def finish(procs, what: str) -> None:
    codes = [p.wait(timeout=1800) for p in procs]
    if codes != [0, 0]:
        sys.exit(f"{what}: exit codes {codes} (see the log)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--strategy", default="deepspeed", choices=["ddp", "fsdp", "deepspeed"])
    ap.add_argument("--zero", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--max-delay", type=float, default=4.0, help="kill within this many seconds of the run's first progress")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill_resume_"))
    sys.path.insert(0, str(REPO))
    from clipav2.data.demo import write_demo

    if not (work / "data" / "train").is_dir():
        write_demo(work / "data", seed=0, n_train=512, n_eval=32, shard_size=128)
    cfg = recipe(work / "recipe.yaml", work / "data", args.steps)
    log = open(work / "runs.log", "a")
    print(f"{args.strategy} (ZeRO-{args.zero}) x 2 ranks, {args.steps} steps, checkpoint every 2; work dir {work}", flush=True)

    t = time.time()
    ref = work / "reference"
    if not (ref / "pretrain.safetensors").is_file():
        finish(launch(args, cfg, ref, log), "the uninterrupted run")
    print(f"uninterrupted run: {time.time() - t:.0f} s", flush=True)

    cut, done, kills = work / "killed", False, 0
    while kills < args.kills:
        before = progress(cut)
        procs = launch(args, cfg, cut, log)
        started = time.time()
        while progress(cut) == before and all(p.poll() is None for p in procs):
            time.sleep(0.05)
        if any(p.poll() is not None for p in procs):  # finished (or failed) before it could be killed
            done = True
            break
        delay = rng.uniform(0, args.max_delay)
        time.sleep(delay)
        if any(p.poll() is not None for p in procs):
            done = True
            break
        kill(procs)
        kills += 1
        ckpts = checkpoints(cut)
        print(f"kill {kills:2d}: {time.time() - started:5.1f} s after launch ({delay:.2f} s after progress), "
              f"last logged step {logged_steps(cut):3d}, last complete checkpoint "
              f"{ckpts[-1] if ckpts else None}, half-written: {len(list(cut.glob('checkpoints/*/*.tmp')))}", flush=True)
    if not done:
        finish(launch(args, cfg, cut, log), "the final resume")
    elif not (cut / "pretrain.safetensors").is_file():
        sys.exit("the killed run ended without its weights (see the log)")
    if kills < args.kills:
        print(f"note: the run finished after {kills} kills (raise --steps for more)")

    from safetensors.torch import load_file

    a, b = load_file(str(ref / "pretrain.safetensors")), load_file(str(cut / "pretrain.safetensors"))
    differ = [k for k in a if k not in b or not (a[k] == b[k]).all()]
    worst = max(((a[k].float() - b[k].float()).abs().max().item() for k in differ if k in b), default=0.0)
    print(f"{kills} kill points; final weights: {len(a)} tensors, {len(differ)} differ (max |diff| {worst:g}): "
          f"{'bit-identical' if not differ and a.keys() == b.keys() else 'DIFFERENT'}")
    return 0 if not differ and a.keys() == b.keys() else 1


if __name__ == "__main__":
    sys.exit(main())
