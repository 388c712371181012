"""What a run reports: one JSON object per logged step in RUN_DIR/metrics.jsonl, the same scalars
as TensorBoard events, and a tqdm bar on the main rank (ETA, samples/s, dollars). Only the main
rank writes; the loop calls `log` at `log.every_steps`, the only place it syncs with the device."""
from __future__ import annotations

import json
from pathlib import Path

METRIC_KEYS = (
    "stage", "step", "samples_seen", "loss", "lr", "logit_scale", "samples_per_s",
    "samples_per_s_per_gpu", "mfu", "data_wait_frac", "gpu_hours", "cost_usd",
    "skipped_samples", "skipped_steps",
)


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


class MetricsLogger:
    """metrics.jsonl + TensorBoard + progress bar for one run; `start_stage` for each stage."""

    def __init__(self, run_dir, enabled: bool, tensorboard: bool = True, progress: bool = True):
        self.enabled, self.progress = enabled, progress and enabled
        self.jsonl = JsonlWriter(Path(run_dir) / "metrics.jsonl", enabled)
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.bar = None

    def start_stage(self, name: str, total_steps: int, done_steps: int) -> None:
        self.close_bar()
        if self.progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=done_steps, desc=name, unit="step", dynamic_ncols=True)

    def log(self, record: dict, steps_advanced: int) -> None:
        if not self.enabled:
            return
        missing = [k for k in METRIC_KEYS if k not in record]
        assert not missing, f"metrics record lacks {missing}"
        self.jsonl.write(record)
        if self.tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step",):
                    self.tb.add_scalar(f"{record['stage']}/{key}", value, record["samples_seen"])
        if self.bar is not None:
            self.bar.update(steps_advanced)
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", sps=f"{record['samples_per_s']:.1f}",
                                 usd=f"{record['cost_usd']:.2f}", refresh=False)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.close_bar()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
