"""What a run reports: one JSON object per logged step in RUN_DIR/metrics.jsonl; the same scalars
and the zero-shot accuracy in TensorBoard (and Weights & Biases with `log.wandb`), all on one
x-axis, the samples seen over the whole recipe, with the stage boundaries marked; progress as a
tqdm bar on a terminal, else a plain line at most every `log.progress_seconds` (log files, SLURM
.out files). Only the main rank writes; the loop calls `log` at `log.every_steps`, the only place
it syncs with the device."""
from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

METRIC_KEYS = (
    "stage", "step", "samples_seen", "recipe_samples", "loss", "lr", "logit_scale", "samples_per_s",
    "samples_per_s_per_gpu", "mfu", "data_wait_frac", "gpu_hours", "cost_usd",
    "skipped_samples", "skipped_steps",
)
NOT_SCALARS = ("step", "time", "recipe_samples", "samples_seen")  # axes and wall clock, not curves
EVAL_KEYS = ("top1", "top5")


def quiet_library_warnings() -> None:
    """Deprecation and advice warnings torch.distributed (DCP, collectives) prints on every save
    or gather: nothing a user of the trainer can act on, so they stay out of the run's output."""
    for category in (FutureWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category, module=r"torch\.distributed\.")  # raised inside torch
        # raised on our call site (stacklevel 2): the autograd all_gather the loss uses
        warnings.filterwarnings("ignore", category=category, message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
        warnings.filterwarnings("ignore", category=category, message=r".*torch\.distributed\.checkpoint")


def stage_header(stage, n_stages: int, step: int) -> str:
    """For a resolved stage (clipav2.stage), e.g. "[finetune] stage 2 of 2: 64 px images, 48 of 64
    patches kept (random mask 25%), captions at 32 tokens (truncated); 64 steps x 128 samples on
    1 rank (1 micro-step each), peak LR 0.0005"."""
    from clipav2.reduce import image, text

    kept, tokens = stage.kept_image_tokens, stage.n_patches
    if kept == tokens:
        pixels = f"{stage.image_size} px images ({tokens} patches)"
    else:
        how = image.get(stage.image_reduction).describe(stage.image_mask_ratio, stage.grid_window)
        pixels = f"{stage.image_size} px images, {kept} of {tokens} patches kept ({how})"
    words = text.get(stage.text_reduction).describe
    ranks, n_micro = stage.world_size, stage.grad_accum
    micro = f"{n_micro} micro-step{'s' if n_micro > 1 else ''} each"
    line = (f"[{stage.name}] stage {stage.index + 1} of {n_stages}: {pixels}, captions at {stage.text_len} tokens ({words}); "
            f"{stage.steps:,} steps x {stage.global_batch:,} samples on {ranks} rank{'s' if ranks > 1 else ''} ({micro}), "
            f"peak LR {stage.peak_lr:.3g}")
    return line + (f"; resuming at step {step:,}" if step else "")


class JsonlWriter:
    """Append-only JSON lines, flushed per record so a crash loses at most the line being written."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record, allow_nan=True) + "\n")


def _scalars(record: dict, keys=None) -> dict:
    return {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in NOT_SCALARS and (keys is None or k in keys)}


class _Wandb:
    """A Weights & Biases run in RUN_DIR/wandb, continued on resume (its id is kept in
    RUN_DIR/wandb_id). WANDB_MODE=offline records without a network (`wandb sync` uploads later)."""

    def __init__(self, project: str, run_dir: Path, config: dict):
        import secrets

        import wandb

        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=project, dir=str(run_dir), id=run_id, resume="allow", name=run_dir.name,
                              config=config)
        self.run.define_metric("recipe_samples")
        self.run.define_metric("*", step_metric="recipe_samples")

    def log(self, values: dict, recipe_samples: int) -> None:
        self.run.log({**values, "recipe_samples": recipe_samples})

    def close(self) -> None:
        self.run.finish()


class MetricsLogger:
    """metrics.jsonl + TensorBoard (+ wandb) + progress for one run; `start_stage` for each stage."""

    def __init__(self, run_dir, enabled: bool, tensorboard: bool = True, progress: bool = True,
                 progress_seconds: float = 60.0, wandb: str | None = None, config: dict | None = None, tty=None):
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.progress, self.progress_seconds = progress and enabled, progress_seconds
        self.jsonl = JsonlWriter(Path(run_dir) / "metrics.jsonl", enabled)
        self.tb = self.wandb = self.bar = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if enabled and wandb:
            self.wandb = _Wandb(wandb, Path(run_dir), config or {})
        self.stage, self.total, self.last_line = None, 0, 0.0

    def start_stage(self, name: str, total_steps: int, done_steps: int, index: int = 0, offset: int = 0) -> None:
        """A stage starts at `offset` recipe samples (a vertical step of train/stage in TensorBoard)."""
        self.close_bar()
        self.stage, self.total, self.last_line = name, total_steps, time.monotonic()
        if self.tb is not None:
            self.tb.add_scalar("train/stage", index, offset)
            self.tb.add_text("stages", f"stage {index + 1} `{name}` starts at {offset:,} samples", offset)
        if self.progress and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=done_steps, desc=name, unit="step", dynamic_ncols=True)

    def log(self, record: dict, steps_advanced: int) -> None:
        if not self.enabled:
            return
        missing = [k for k in METRIC_KEYS if k not in record]
        assert not missing, f"metrics record lacks {missing}"
        self.jsonl.write(record)
        x, walltime = record["recipe_samples"], record.get("time")
        if self.tb is not None:
            for key, value in _scalars(record).items():
                self.tb.add_scalar(f"train/{key}", value, x, walltime=walltime)
        if self.wandb is not None:
            self.wandb.log({f"train/{k}": v for k, v in _scalars(record).items()}, x)
        if self.bar is not None:
            self.bar.update(steps_advanced)
            # the bar's own ETA is this stage's; the recipe's comes from the projection
            left = record.get("seconds_to_go")
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.1f}",
                                 usd=f"{record['cost_usd']:.2f}", **({"all": f"~{_duration(left)}"} if left else {}),
                                 refresh=False)
        elif self.progress and (record["step"] >= self.total or time.monotonic() - self.last_line >= self.progress_seconds):
            self.last_line = time.monotonic()
            print(progress_line(record, self.total), flush=True)

    def log_eval(self, record: dict) -> None:
        """One evaluation (eval.jsonl's record): zero-shot top-1/top-5 (and recall@k) at its
        recipe samples, also against dollars in wandb."""
        if not self.enabled:
            return
        x, walltime = record["recipe_samples"], record.get("time")
        values = {f"eval/zero_shot_{k}": record[k] for k in EVAL_KEYS if isinstance(record.get(k), float)}
        values.update({f"eval/retrieval_{k}": v for k, v in record.get("retrieval", {}).items() if k not in ("n", "ranks")})
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, x, walltime=walltime)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({**values, "eval/cost_usd": record["cost_usd"], "eval/gpu_hours": record["gpu_hours"]}, x)

    def say(self, message: str) -> None:
        """A line of output that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None


def progress_line(record: dict, total_steps: int) -> str:
    """"[pretrain] step 120/250 (48%), 15,360 samples, loss 2.345, 142 samples/s, $0.0123 spent,
    1m 12s to go in this stage, ~4m 30s in all": the times to go are the record's projection (the
    measured rate, evaluations and checkpoints at the ratio measured so far, later stages by FLOPs)."""
    step, sps = record["step"], record["samples_per_s"]
    stage_left, all_left = record.get("stage_seconds_to_go"), record.get("seconds_to_go")
    eta = ""
    if step >= total_steps:
        eta = ", done" + (f", ~{_duration(all_left)} to go in all" if all_left else "")
    elif stage_left is not None:
        eta = f", {_duration(stage_left)} to go in this stage, ~{_duration(all_left)} in all"
    return (f"[{record['stage']}] step {step:,}/{total_steps:,} ({step / max(total_steps, 1):.0%}), "
            f"{record['samples_seen']:,} samples, loss {record['loss']:.3f}, {sps:,.1f} samples/s, "
            f"${record['cost_usd']:.4g} spent{eta}")


def compute_line(device: str, ranks: int, recipe_flops: float) -> str:
    """What the run computes on and how much, said before the first step: "compute: 1 rank on cpu
    (2 cores, 2 threads); the recipe trains 12.65 TFLOP; the expected time follows its first logged
    steps". A CPU's threads say why a run is slower than the README's figure."""
    threads = os.environ.get("OMP_NUM_THREADS")
    chosen = f", threads set by OMP_NUM_THREADS={threads}" if threads and device.startswith("cpu") else ""
    return (f"compute: {ranks} rank{'s' if ranks > 1 else ''} on {device}{chosen}; the recipe trains "
            f"{_si(recipe_flops)}FLOP; the expected time follows its first logged steps")


def expected_line(record: dict, steps: int, flops_per_sample: float, overhead: float) -> str:
    """After the first logged steps: "expected: ~4m 10s to the end of the recipe at 48.50 GFLOP/s,
    measured on steps 1-10 of pretrain (evaluations and checkpoints +12%, as measured so far); ..."."""
    first, last = record["step"] - steps + 1, record["step"]
    rate = record["samples_per_s"] * flops_per_sample
    extra = (f"evaluations and checkpoints +{overhead:.0%}, as measured so far" if overhead > 0 else
             "evaluations and checkpoints not included until one is measured")
    return (f"expected: ~{_duration(record['seconds_to_go'])} to the end of the recipe at {_si(rate)}FLOP/s, "
            f"measured on steps {first}-{last} of {record['stage']} ({extra}); a busier machine takes longer, "
            f"and the progress line follows it")


def _si(x: float) -> str:
    """12.65e12 -> "12.65 T" (FLOPs and FLOP/s: G, T, P, E)."""
    for prefix, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12)):
        if x >= scale:
            return f"{x / scale:,.2f} {prefix}"
    return f"{x / 1e9:,.2f} G"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    h, m = s // 3600, s % 3600 // 60
    return f"{h}h {m:02d}m" if h else f"{m}m {s % 60:02d}s" if m else f"{s}s"
