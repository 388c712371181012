"""Atomic, self-checking checkpoint directories.

    RUN_DIR/checkpoints/step_00001000/        complete: has manifest.json
    RUN_DIR/checkpoints/step_00002000.tmp/    being written (or a crash left it): ignored

Every rank writes its shards into the `.tmp` directory (the engine's `save`), its `extra` as
extra/rank_<r>.json, the main rank the step's state as strategy.json; then the manifest
(every file's size and CRC32, hashed in parallel by the ranks) is written last and the directory
renamed; a directory without a manifest is incomplete. On resume the newest complete checkpoint
whose files match their manifest is loaded; a truncated or corrupt one is skipped with a warning
and the previous one used. Nothing here unpickles: manifests and `extra` are JSON, the strategies
load tensors with weights_only / allow-listed readers.

    step_00001000/strategy.json        engine name, stage, step count, skip counters, world size
    step_00001000/extra/rank_<r>.json  each rank's `extra` (step, data position, RNG, ledger...)
    step_00001000/state/ | deepspeed/  the engine's model and optimizer state
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
import warnings
import zlib
from pathlib import Path

import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from clipav2.parallel.env import any_rank
from clipav2.safe_load import code_error, one_line, read_json, weights_only_loads
from clipav2.train.state_check import check_extra, check_strategy_meta

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
PREFIX = "step_"


class IncompatibleCheckpoint(Exception):
    """A checkpoint made for another model / stage / shapes than this run's; names what differs."""


def fingerprint(model_name: str, stage, model) -> dict:
    """What a checkpoint must match to be resumed: the architecture, the stage, every tensor's
    shape (another text_len or image size shows up as a position-table shape)."""
    return {"model": model_name, "stage": stage.name, "image_size": stage.image_size, "text_len": stage.text_len,
            "shapes": {k: list(v.shape) for k, v in model.state_dict().items()}}


def fingerprint_differences(saved: dict, ours: dict) -> list[str]:
    out = [f"{k} {saved.get(k)!r} (this run: {ours.get(k)!r})" for k in ("model", "stage", "image_size", "text_len")
           if saved.get(k) != ours.get(k)]
    a, b = saved.get("shapes", {}), ours.get("shapes", {})
    shapes = [f"{k} {a.get(k)} (this run: {b.get(k)})" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]
    if shapes:
        out.append(f"{len(shapes)} tensor shape(s) differ, e.g. {shapes[0]}")
    return out


class NoSpace(OSError):
    """The disk filled up during a save; the message is one line."""


def _no_space(e: BaseException):
    """The path (or "" if unknown) of an ENOSPC somewhere in `e` (DCP wraps a rank's errors), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return e.filename or ""
        for failure in (getattr(e, "failures", None) or {}).values():
            inner = _no_space(failure[0] if isinstance(failure, tuple) else failure)
            if inner is not None:
                return inner
        e = e.__cause__ or e.__context__
    return None


class CheckpointWarning(UserWarning):
    """A checkpoint skipped on resume; printed as one line ("warning: ...")."""


_format_warning = warnings.formatwarning


def _one_line_format(message, category, *args, **kwargs):
    if issubclass(category, CheckpointWarning):
        return f"warning: {message}\n"
    return _format_warning(message, category, *args, **kwargs)


warnings.formatwarning = _one_line_format


def _warn(message: str) -> None:
    """A CheckpointWarning that no filter for library noise silences (its text names DCP's modules)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", CheckpointWarning)
        warnings.warn(message, CheckpointWarning, stacklevel=3)


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


def _all_gather_json(world, value):
    if world is None or not world.distributed:
        return [value]
    out = [None] * world.world_size
    dist.all_gather_object(out, value)
    return out


def _checksums(directory: Path, world) -> dict:
    """{relative path: [size, crc32]} of every file, the hashing split across ranks."""
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)
    rank, size = (world.rank, world.world_size) if world is not None and world.distributed else (0, 1)
    mine = {str(p.relative_to(directory)): [p.stat().st_size, _crc32(p)] for p in files[rank::size]}
    merged = {}
    for part in _all_gather_json(world, mine):
        merged.update(part)
    return merged


def verify(directory: Path, world=None) -> str | None:
    """None if `directory` matches its manifest, else why not (the same answer on every rank)."""
    try:
        expected = read_json(directory / MANIFEST)["files"]
        if not all(isinstance(k, str) and isinstance(v, list) and len(v) == 2 for k, v in expected.items()):
            raise TypeError("files is not {name: [size, crc32]}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        problem = f"unreadable manifest ({one_line(e)})"
    else:
        problem = None
    problem = _all_gather_json(world, problem)[0]  # rank 0's view decides for everyone
    if problem:
        return problem
    found = _checksums(directory, world)
    for name, (size, crc) in expected.items():
        if name not in found:
            return f"{name} is missing"
        if found[name][0] != size:
            return f"{name} is truncated ({found[name][0]} of {size} bytes)"
        if found[name][1] != crc:
            return f"{name} is corrupt (CRC32 mismatch)"
    return None


META = "strategy.json"


def save_step_state(directory, step_state, extra: dict) -> None:
    """Every rank: the engine's model and optimizer state, its own `extra` (JSON-able: step, data
    position, RNG...); the main rank: the step's own state (META)."""
    path, world = Path(directory), step_state.world
    (path / "extra").mkdir(parents=True, exist_ok=True)
    step_state.engine.save(path, step_state.optimizer)
    skips = step_state.skips.state_dict()
    (path / "extra" / f"rank_{world.rank}.json").write_text(json.dumps(extra))
    if world.is_main:
        meta = {
            "strategy": step_state.engine.name,
            "stage": step_state.stage.name,
            "step_count": step_state.count,
            "skipped_total": skips["total"],
            "skips": skips,
            "world_size": world.world_size,
        }
        (path / META).write_text(json.dumps(meta, indent=1))
    if world.distributed:
        dist.barrier()


def load_step_state(directory, step_state) -> dict:
    """Restore model, optimizer, step count and skip counters written by `save_step_state`; returns this
    rank's `extra` (rank 0's when the checkpoint came from a smaller world)."""
    path = Path(directory)
    meta = read_json(path / META)
    check_strategy_meta(meta)
    own = path / "extra" / f"rank_{step_state.world.rank}.json"
    extra = read_json(own if own.exists() else path / "extra" / "rank_0.json")
    check_extra(extra)
    if meta["stage"] != step_state.stage.name:
        raise ValueError(f"checkpoint {path} is of stage {meta['stage']!r}, the run is at stage {step_state.stage.name!r}")
    step_state.engine.load(path, step_state.optimizer)
    step_state.count = meta["step_count"]
    step_state.skips.load_state_dict(meta.get("skips", {"total": meta.get("skipped_total")}))
    return extra


class CheckpointManager:
    """Saves every `every_steps` steps or `every_minutes` minutes (rank 0's clock decides for all),
    keeps the newest `keep`, and finds the newest good one on start."""

    def __init__(self, root, every_steps: int, every_minutes: float, keep: int, world=None):
        self.root = Path(root)
        self.every_steps, self.every_minutes, self.keep = every_steps, every_minutes, keep
        self.world = world
        self.fingerprint = None  # set by the loop: written with each checkpoint, checked on resume
        self._reported = set()  # manifest-less directories already reported
        self._last_save = time.monotonic()

    @classmethod
    def from_config(cls, cfg, world, root=None):
        c = cfg.checkpoint
        return cls(root or Path(cfg.run_dir) / "checkpoints", c.every_steps, c.every_minutes, c.keep, world)

    @property
    def _main(self) -> bool:
        return self.world is None or self.world.is_main

    def _barrier(self):
        if self.world is not None and self.world.distributed:
            dist.barrier()

    def due(self, step: int) -> bool:
        """Is a checkpoint due after `step` (1-based count of completed steps)? Collective."""
        late = (time.monotonic() - self._last_save) / 60 >= self.every_minutes
        return step % self.every_steps == 0 or any_rank(self.world, late and self._main)

    def complete(self) -> list[Path]:
        """Complete checkpoint directories (with a manifest), newest first; one without a
        manifest is reported (main rank) and skipped."""
        if not self.root.is_dir():
            return []
        dirs = [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.suffix != ".tmp"
                and p.name[len(PREFIX):].isdigit()]
        for p in dirs:
            if not (p / MANIFEST).exists() and self._main and p not in self._reported:
                self._reported.add(p)
                _warn(f"checkpoint {p} has no {MANIFEST} (an incomplete save); skipped")
        dirs = [p for p in dirs if (p / MANIFEST).exists()]
        return sorted(dirs, key=lambda p: int(p.name[len(PREFIX):]), reverse=True)

    def _saved_fingerprint(self, path: Path) -> dict | None:
        try:
            value = read_json(path / FINGERPRINT)
        except (OSError, ValueError):
            return None  # made before fingerprints existed, or unreadable: the load itself decides
        return value if isinstance(value, dict) else None

    def _ours(self, path: Path) -> bool:
        saved = self._saved_fingerprint(path)
        return self.fingerprint is None or saved is None or not fingerprint_differences(saved, self.fingerprint)

    def check_fingerprints(self) -> None:
        """Raise IncompatibleCheckpoint naming what differs if a complete checkpoint here was
        made for another model, stage or shapes (never a silent fresh start)."""
        if self.fingerprint is None:
            return
        for path in self.complete():
            saved = self._saved_fingerprint(path)
            diff = fingerprint_differences(saved, self.fingerprint) if saved is not None else []
            if diff:
                raise IncompatibleCheckpoint(f"checkpoint {path} was made for another model or stage: {'; '.join(diff)}; "
                                             "resume with the recipe it was made with, or pass --fresh")

    def save(self, step_state, step: int, extra: dict) -> Path:
        """Write a checkpoint of `step`. A full disk raises NoSpace (one line naming the path and
        the checkpoint kept) after removing the half-written directory."""
        tmp = (self.root / f"{PREFIX}{step:08d}").with_suffix(".tmp")
        try:
            return self._save(step_state, step, extra)
        except (Exception, CheckpointException) as e:  # DCP's is a BaseException
            where = _no_space(e)
            if where is None:
                raise
            if self._main:
                shutil.rmtree(tmp, ignore_errors=True)
            kept = self.complete()
            raise NoSpace(f"no space left on device writing {where or tmp}; previous checkpoint "
                          f"{kept[0] if kept else '(none)'} kept") from None

    def _save(self, step_state, step: int, extra: dict) -> Path:
        final = self.root / f"{PREFIX}{step:08d}"
        tmp = final.with_suffix(".tmp")
        if self._main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        save_step_state(tmp, step_state, extra)
        self._barrier()
        files = _checksums(tmp, self.world)
        if self._main:
            if self.fingerprint is not None:
                (tmp / FINGERPRINT).write_text(json.dumps(self.fingerprint))
                files[FINGERPRINT] = [(tmp / FINGERPRINT).stat().st_size, _crc32(tmp / FINGERPRINT)]
            manifest = {"step": step, "time": time.time(), "world_size": step_state.world.world_size, "files": files}
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if final.exists():  # a step saved twice (e.g. preempted right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in [p for p in self.complete() if self._ours(p)][self.keep:]:  # never another run's
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()
        self._last_save = time.monotonic()
        return final

    def resume(self, step_state, check=None) -> dict | None:
        """Load the newest good checkpoint into `step_state` (a `train.step.TrainStep`); its
        `extra`, or None if there is none.
        `check(extra)` may refuse a loaded state (ValueError, TypeError, KeyError). Every rank
        agrees on each candidate (one small collective) and falls back with the others. Raises
        CheckpointCodeError for a code or library error, NoUsableCheckpoint if none loads."""
        candidates = self.complete()
        refused = []
        for i, path in enumerate(candidates):
            problem = verify(path, self.world)
            if problem is None:
                problem = self._agree(self._try(lambda: step_state.engine.check_files(path)))
            extra = None
            if problem is None:
                def load():
                    nonlocal extra
                    with weights_only_loads():
                        extra = load_step_state(path, step_state)
                    if check is not None:
                        check(extra)
                problem = self._agree(self._try(load))
                if problem is None:
                    return extra
            refused.append(f"{path.name}: {problem}")
            fallback = candidates[i + 1].name if i + 1 < len(candidates) else None
            if self._main and fallback is not None:
                _warn(f"checkpoint {path} is unusable: {problem}; falling back to {fallback}")
        if refused:
            raise NoUsableCheckpoint(f"none of the {len(refused)} checkpoints in {self.root} can be resumed "
                                     f"({'; '.join(refused)}); pass --fresh to start the stage over")
        return None

    @staticmethod
    def _try(action) -> tuple:
        """(None, None) if `action()` ran, (problem, None) if it refused the checkpoint, or
        (None, error line) for a code or library error."""
        try:
            action()
        except (Exception, CheckpointException) as e:  # DCP's is a BaseException
            bug = code_error(e)
            if bug is not None:
                return None, f"{type(bug).__name__}: {' '.join(str(bug).split())}"
            return f"failed to load ({one_line(e)})", None
        return None, None

    def _agree(self, outcome: tuple) -> str | None:
        """Every rank's (problem, code error) -> the first rank's problem for all (None: every rank
        loaded); a code error on any rank raises CheckpointCodeError on every rank."""
        outcomes = _all_gather_json(self.world, list(outcome))
        for rank, (_, bug) in enumerate(outcomes):
            if bug is not None:
                raise CheckpointCodeError(f"loading a checkpoint in {self.root} failed with a code or library error on "
                                          f"rank {rank}, not a damaged checkpoint: {bug}")
        problems = [(rank, p) for rank, (p, _) in enumerate(outcomes) if p is not None]
        if not problems:
            return None
        rank, problem = problems[0]
        return problem if len(outcomes) == 1 else f"{problem} on rank {rank}"


class NoUsableCheckpoint(Exception):
    """Checkpoints exist but none can be resumed; the message lists why each was refused."""


class CheckpointCodeError(RuntimeError):
    """Loading a checkpoint hit a code or library error (e.g. an AttributeError from a moved
    internal): reported as such, never taken for a damaged checkpoint."""
