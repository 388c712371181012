"""The shape of a checkpoint's JSON state (strategy.json, extra/rank_N.json and the ledger snapshot
inside it), checked before any of it is used: a well-formed file of the wrong shape (a list for a
dict, a string for a step count, a short RNG state) makes the checkpoint unusable, exactly as a bad
CRC does, instead of failing later in the run. Each check raises BadState naming the field."""
from __future__ import annotations

from clipav2.json_shape import BadState, count, int_list, is_int, is_number, mapping, need

__all__ = ["BadState", "check_extra", "check_ledger", "check_rng", "check_strategy_meta"]


def check_strategy_meta(meta) -> None:
    """strategy.json: {"strategy", "stage", "step_count", "skips" / "skipped_total", ...}."""
    mapping(meta, "strategy.json")
    need(isinstance(meta.get("stage"), str), "strategy.json stage", meta.get("stage"), "a stage name")
    count(meta.get("step_count"), "strategy.json step_count")
    skips = meta.get("skips", {"total": meta.get("skipped_total")})
    for k, v in mapping(skips, "strategy.json skips").items():
        count(v, f"strategy.json skips.{k}")


def check_rng(state) -> None:
    """The RNG states `checkpoint.set_rng_state` restores (python, numpy, torch[, cuda])."""
    import torch

    mapping(state, "rng")
    py = state.get("python")
    need(isinstance(py, list) and len(py) == 3 and is_int(py[0]) and (py[2] is None or is_number(py[2])), "rng.python", py,
         "[version, state, gauss]")
    int_list(py[1], "rng.python state", 625, 2**32 - 1)
    npy = state.get("numpy")
    need(isinstance(npy, list) and len(npy) == 5 and npy[0] == "MT19937" and is_int(npy[2]) and is_int(npy[3])
         and is_number(npy[4]), "rng.numpy", npy, "[MT19937, keys, pos, has_gauss, cached]")
    int_list(npy[1], "rng.numpy keys", 624, 2**32 - 1)
    int_list(state.get("torch"), "rng.torch", torch.get_rng_state().numel(), 255)
    if "cuda" in state and torch.cuda.is_available():
        int_list(state["cuda"], "rng.cuda", torch.cuda.get_rng_state().numel(), 255)


def check_ledger(snapshot) -> None:
    """The ledger snapshot (clipav2.cost.ledger.Ledger.state_dict)."""
    mapping(snapshot, "ledger")
    need(is_int(snapshot.get("format")), "ledger format", snapshot.get("format"), "an integer")
    for name, stage in mapping(snapshot.get("stages"), "ledger stages").items():
        mapping(stage, f"ledger stages.{name}")
        for field in ("gpu_seconds", "usd", "events"):
            for k, v in mapping(stage.get(field, {}), f"ledger stages.{name}.{field}").items():
                need(is_number(v), f"ledger stages.{name}.{field}.{k}", v, "a number")
        for field in ("steps", "samples", "lost_steps"):
            count(stage.get(field, 0), f"ledger stages.{name}.{field}")


def check_extra(extra) -> None:
    """extra/rank_N.json, as the training loop writes it; the data state is the loader's to check."""
    mapping(extra, "extra")
    for field in ("step", "skipped_steps", "samples_seen"):
        if field in extra:
            count(extra[field], f"extra {field}")
    need(extra.get("budget_stop") is None or is_number(extra["budget_stop"]), "extra budget_stop",
         extra.get("budget_stop"), "a number or null")
    if "rng" in extra:
        check_rng(extra["rng"])
    if extra.get("ledger") is not None:
        check_ledger(extra["ledger"])
    if "data" in extra:
        mapping(extra["data"], "extra data")
