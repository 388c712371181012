"""The GPU-hour ledger: wall seconds x GPUs in the job, per stage and per kind of time.

Only the main rank keeps one. It is saved inside every checkpoint (`state_dict`) and written to
RUN_DIR/ledger.json at every log interval (`write`), so a crash forgets at most the time since
the last log write. Resuming (`Ledger.resume`) starts from the checkpoint's snapshot and moves the
work done after that snapshot — steps and evaluations that will be redone — into `lost`, so time
is never counted twice and never forgotten.
"""
from __future__ import annotations

import copy
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

KINDS = ("train", "eval", "checkpoint", "startup", "data_wait", "lost")
REDONE_KINDS = ("train", "data_wait", "eval")  # work after the restored snapshot is done again
FORMAT_VERSION = 1
FILENAME = "ledger.json"


class LedgerError(ValueError):
    """A missing, unreadable or too-new ledger; the message names the file."""


def _empty_stage() -> dict:
    return {"gpu_seconds": {k: 0.0 for k in KINDS}, "usd": {k: 0.0 for k in KINDS},
            "events": {k: 0 for k in KINDS}, "steps": 0, "samples": 0, "lost_steps": 0}


class Ledger:
    """Usage in the loop (main rank):

        ledger = Ledger.resume(ckpt_extra.get("ledger"), run_dir, gpus=world, price=price)
        with ledger.track("checkpoint", stage.name): ...write a checkpoint...
        ledger.add(stage.name, "train", seconds)    # a step, timed together with its data wait
        ledger.set_progress(stage.name, step, samples_seen)
        ledger.write(run_dir, projection=...)       # every log interval
        extra["ledger"] = ledger.state_dict()      # every checkpoint
    """

    def __init__(self, gpus: int, price_per_gpu_hour: float, clock=time.monotonic, accelerator: str = "unknown"):
        if gpus < 1:
            raise ValueError(f"ledger: gpus must be >= 1, got {gpus}")
        if price_per_gpu_hour < 0:
            raise ValueError(f"ledger: price per GPU-hour must be >= 0, got {price_per_gpu_hour}")
        self.gpus, self.price, self.clock, self.accelerator = gpus, float(price_per_gpu_hour), clock, accelerator
        self.stages: dict[str, dict] = {}

    # ------------------------------------------------------------------ accrual
    def stage(self, name: str) -> dict:
        return self.stages.setdefault(name, _empty_stage())

    def add(self, stage: str, kind: str, wall_seconds: float) -> None:
        """Charge `wall_seconds` of the whole job (x gpus) to `stage`/`kind`."""
        if kind not in KINDS:
            raise ValueError(f"ledger: unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
        if wall_seconds < 0:
            raise ValueError(f"ledger: negative time {wall_seconds} for {stage}/{kind}")
        s = self.stage(stage)
        gpu_seconds = wall_seconds * self.gpus
        s["gpu_seconds"][kind] += gpu_seconds
        s["usd"][kind] += gpu_seconds / 3600.0 * self.price
        s["events"][kind] += 1

    @contextmanager
    def track(self, kind: str, stage: str):
        """Time the block with the injected clock and charge it, even when the block raises."""
        start = self.clock()
        try:
            yield
        finally:
            self.add(stage, kind, self.clock() - start)

    def set_progress(self, stage: str, steps: int, samples: int) -> None:
        s = self.stage(stage)
        s["steps"], s["samples"] = int(steps), int(samples)

    # ------------------------------------------------------------------ reading
    @property
    def total_gpu_seconds(self) -> float:
        return sum(sum(s["gpu_seconds"].values()) for s in self.stages.values())

    @property
    def total_usd(self) -> float:
        return sum(sum(s["usd"].values()) for s in self.stages.values())

    @property
    def usd_per_second(self) -> float:
        """What one more wall second of the whole job costs now."""
        return self.gpus * self.price / 3600.0

    def mean_seconds(self, kind: str) -> float:
        """Mean wall seconds of one `kind` event (e.g. one checkpoint write); 0 if none yet."""
        seconds = sum(s["gpu_seconds"][kind] for s in self.stages.values()) / self.gpus
        events = sum(s["events"][kind] for s in self.stages.values())
        return seconds / events if events else 0.0

    def summary(self) -> dict:
        by_kind = {k: sum(s["gpu_seconds"][k] for s in self.stages.values()) / 3600.0 for k in KINDS}
        by_stage = {n: {"gpu_hours": sum(s["gpu_seconds"].values()) / 3600.0, "cost_usd": sum(s["usd"].values()),
                        "steps": s["steps"], "samples": s["samples"], "lost_steps": s["lost_steps"]}
                    for n, s in self.stages.items()}
        return {"gpu_hours": self.total_gpu_seconds / 3600.0, "cost_usd": self.total_usd,
                "gpu_hours_by_kind": by_kind, "stages": by_stage}

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        return {"format": FORMAT_VERSION, "accelerator": self.accelerator, "gpus": self.gpus,
                "price_per_gpu_hour": self.price, "stages": copy.deepcopy(self.stages)}

    def load_state_dict(self, state: dict) -> None:
        check_format(state, "ledger state")
        self.stages = {}
        for name, saved in state["stages"].items():
            s = self.stage(name)
            for field in ("gpu_seconds", "usd", "events"):
                s[field].update(saved.get(field, {}))
            for field in ("steps", "samples", "lost_steps"):
                s[field] = saved.get(field, 0)

    def write(self, run_dir, **extra) -> Path:
        """RUN_DIR/ledger.json, atomically (write a temporary file, then rename)."""
        out = Path(run_dir)
        out.mkdir(parents=True, exist_ok=True)
        doc = self.state_dict()
        doc.update(updated_unix=time.time(), totals={"gpu_hours": self.total_gpu_seconds / 3600.0, "usd": self.total_usd})
        doc.update(extra)
        tmp = out / f".{FILENAME}.tmp"
        tmp.write_text(json.dumps(doc, indent=1))
        os.replace(tmp, out / FILENAME)
        return out / FILENAME

    @classmethod
    def resume(cls, checkpoint_state: dict | None, run_dir, gpus: int, price: float, clock=time.monotonic,
               accelerator: str = "unknown") -> "Ledger":
        """The ledger to continue with: the checkpoint's snapshot (None for a fresh start) plus,
        from RUN_DIR/ledger.json when it is newer, the time spent after that snapshot. Train,
        data-wait and eval time after the snapshot become `lost` (those steps run again);
        checkpoint writes and start-ups stay what they were."""
        ledger = cls(gpus, price, clock, accelerator)
        if checkpoint_state is not None:
            ledger.load_state_dict(checkpoint_state)
        path = Path(run_dir) / FILENAME
        if path.is_file():
            ledger._absorb_after_snapshot(read(run_dir))
        return ledger

    def _absorb_after_snapshot(self, latest: dict) -> None:
        for name, later in latest["stages"].items():
            s = self.stage(name)
            snapshot = copy.deepcopy(s)  # deltas against the checkpoint, not the buckets being moved into
            for kind in KINDS:
                extra_s = later["gpu_seconds"].get(kind, 0.0) - snapshot["gpu_seconds"][kind]
                extra_usd = later["usd"].get(kind, 0.0) - snapshot["usd"][kind]
                if extra_s <= 0:
                    continue  # the log file is older than the checkpoint here
                target = "lost" if kind in REDONE_KINDS else kind
                s["gpu_seconds"][target] += extra_s
                s["usd"][target] += max(extra_usd, 0.0)
                if target == kind:  # keep seconds and event counts consistent (mean checkpoint time)
                    s["events"][kind] = max(s["events"][kind], later["events"].get(kind, 0))
            s["lost_steps"] += max(0, later.get("steps", 0) - s["steps"]) + max(0, later.get("lost_steps", 0) - s["lost_steps"])


def check_format(doc: dict, what: str) -> None:
    if not isinstance(doc, dict) or "stages" not in doc or "format" not in doc:
        raise LedgerError(f"{what}: not a clipav2 ledger (no 'format' / 'stages')")
    if not isinstance(doc["format"], int) or doc["format"] > FORMAT_VERSION:
        raise LedgerError(f"{what}: format {doc['format']!r} is newer than this clipav2 reads ({FORMAT_VERSION}); upgrade clipav2")


def read(run_dir) -> dict:
    """The RUN_DIR/ledger.json document, checked; LedgerError when missing, corrupt or too new."""
    path = Path(run_dir) / FILENAME
    if not path.is_file():
        raise LedgerError(f"{path}: no ledger here (not a clipav2 run directory, or the run has not logged yet)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LedgerError(f"{path}: unreadable ({e})") from None
    check_format(doc, str(path))
    return doc
