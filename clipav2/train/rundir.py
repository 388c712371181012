"""What a run directory holds between attempts, checked when a run starts (with RUN_DIR locked):

- `config.yaml` is the resolved config the run was started with. Resuming with a changed recipe
  is an error listing the keys that differ, except keys that are safe by nature (data paths,
  workers, logging, evaluation, checkpoint cadence, the memory layout of a step, the budget),
  which are listed and taken. `--fresh` starts over: the old state is moved to
  RUN_DIR/previous/<UTC time>/, never deleted.
- `checkpoints/*/step_*.tmp`: a save that crashed (or ran out of disk); removed.
"""
from __future__ import annotations

import fnmatch
import shutil
import time
from pathlib import Path

from clipav2.config import ConfigError, parse_yaml, to_dict

PREVIOUS = "previous"
KEPT_IN_PLACE = {".lock", PREVIOUS}

# dotted keys (fnmatch patterns) whose change cannot change what a resumed run computes
SAFE_KEYS = (
    "run_dir",
    "data.train", "data.eval", "data.retrieval", "data.vocab", "data.workers", "data.prefetch", "data.pin_memory",
    "data.eval_classnames", "data.eval_templates",
    "log.*", "eval.*", "checkpoint.*",
    "parallel.micro_batch", "parallel.grad_accum", "parallel.timeout_minutes", "parallel.reshard_after_forward",
    "parallel.hsdp_shard_size", "stages.*.micro_batch",
    "model.compile", "model.checkpointing",
    "cost.budget_usd", "cost.stop_fraction", "cost.price_per_gpu_hour", "cost.gpu",
)


class RecipeChanged(Exception):
    """RUN_DIR holds progress of another recipe; the message lists the keys that differ."""


def flatten(tree, prefix: str = "") -> dict:
    """{dotted key: value}; stages are addressed by name (stages.<name>.<key>)."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(tree, list) and tree and all(isinstance(s, dict) and "name" in s for s in tree):
        for i, s in enumerate(tree):
            out[f"{prefix}.{s['name']}.position"] = i
            out.update(flatten({k: v for k, v in s.items() if k != "name"}, f"{prefix}.{s['name']}"))
    else:
        out[prefix] = tree
    return out


def _default(key: str):
    """The built-in default of a dotted key (a key added to the config after a run was started
    is absent from its config.yaml: its default is what that run used)."""
    from clipav2.config import Config, StageConfig

    parts = key.split(".")
    if parts[0] == "stages" and len(parts) > 2:
        return flatten(to_dict(StageConfig())).get(".".join(parts[2:]), "<absent>")
    return flatten(to_dict(Config())).get(key, "<absent>")


def differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose value differs (a key missing on one side counts as its default)."""
    a, b = flatten(old), flatten(new)
    value = lambda d, k: d[k] if k in d else _default(k)  # noqa: E731
    return sorted(k for k in a.keys() | b.keys() if value(a, k) != value(b, k))


def is_safe(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in SAFE_KEYS)


def has_progress(run_dir: Path) -> bool:
    """A finished stage or a complete checkpoint: something a changed recipe would mix with."""
    if any(run_dir.glob("*.safetensors")):
        return True
    return any(run_dir.glob("checkpoints/*/step_*/manifest.json"))


def move_aside(run_dir: Path) -> Path | None:
    """`--fresh`: everything but the lock and older moved-aside state -> RUN_DIR/previous/<time>/."""
    items = [p for p in run_dir.iterdir() if p.name not in KEPT_IN_PLACE] if run_dir.is_dir() else []
    if not items:
        return None
    dest = run_dir / PREVIOUS / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    while dest.exists():
        dest = dest.with_name(dest.name + "x")
    dest.mkdir(parents=True)
    for p in items:
        p.rename(dest / p.name)
    return dest


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Half-written checkpoints (`.tmp`) left by a crash or a full disk; the lock is held, so
    nobody is writing them."""
    stale = sorted(run_dir.glob("checkpoints/*/*.tmp"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def check_recipe(cfg, run_dir: Path) -> list[str]:
    """Raise RecipeChanged if RUN_DIR has progress made with a recipe that differs from `cfg` in
    keys that are not safe; returns the safe keys that changed."""
    saved = run_dir / "config.yaml"
    if not saved.is_file() or not has_progress(run_dir):
        return []
    try:
        old = parse_yaml(saved.read_bytes(), str(saved))
    except ConfigError as e:
        raise RecipeChanged(f"{e}; use --fresh to start over") from None
    changed = differences(old if isinstance(old, dict) else {}, to_dict(cfg))
    unsafe = [k for k in changed if not is_safe(k)]
    if unsafe:
        a, b = flatten(old), flatten(to_dict(cfg))
        shown = ", ".join(f"{k} {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in unsafe[:8])
        more = f" and {len(unsafe) - 8} more" if len(unsafe) > 8 else ""
        raise RecipeChanged(f"{run_dir} holds a run of another recipe: {shown}{more}; "
                            "resume with the same recipe, or pass --fresh to start over (the old state is moved aside)")
    return changed


def start_fresh(cfg, world) -> None:
    """`--fresh` (main rank, RUN_DIR locked): move the old state aside."""
    if world.is_main and (dest := move_aside(Path(cfg.run_dir))) is not None:
        print(f"--fresh: the previous state of {cfg.run_dir} is now in {dest}", flush=True)


def prepare(cfg, world) -> None:
    """With RUN_DIR locked: stale .tmp removal, the recipe check, then config.yaml (main rank).
    Raises RecipeChanged on every rank. Collective."""
    from clipav2.config import save_config
    from clipav2.parallel.env import any_rank

    problem = None
    if world.is_main:
        run_dir = Path(cfg.run_dir)
        for p in remove_stale_tmp(run_dir):
            print(f"removed the half-written checkpoint {p}", flush=True)
        try:
            safe = check_recipe(cfg, run_dir)
        except RecipeChanged as e:
            problem = e
        else:
            if safe:
                print(f"resuming with changed settings that are safe to change: {', '.join(safe)}", flush=True)
            save_config(cfg)
    if any_rank(world, problem is not None):
        raise problem or RecipeChanged(f"{cfg.run_dir} holds a run of another recipe (rank 0 lists the keys)")
