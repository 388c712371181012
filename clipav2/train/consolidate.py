"""Full fp32 weights out of a resumable checkpoint, on one process with no process group, so a
stage that runs for days can be evaluated or exported while it trains:

    RUN_DIR/checkpoints/<stage>/step_00001000/   one step (`clipav2 eval --checkpoint`, `clipav2 convert`)
    RUN_DIR/checkpoints/<stage>/                 its newest complete step

single, ddp and fsdp write torch.distributed.checkpoint shards (`state/`): their "model" entries
are read through DCP's own key loader with the allow-listing metadata reader of
`parallel.dcp_io`. DeepSpeed ZeRO-1/2/3 (`deepspeed/zero/`) is merged by DeepSpeed's
`zero_to_fp32` from the fp32 master partitions, with every `torch.load` forced to weights_only and
only DeepSpeed's few checkpoint classes allowed. Nothing read here runs code. The files are
checked against the step's manifest first, and the architecture is the one the training loop
builds for that stage (`stages.build_stage_model`, from RUN_DIR/config.yaml or a given config).
"""
from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from clipav2.train.checkpoint import MANIFEST, PREFIX, CheckpointManager, verify
from clipav2.safe_load import UnsafeCheckpoint, one_line, read_json, weights_only_loads
from clipav2.train.state_check import check_strategy_meta


def find_step_dir(path) -> Path | None:
    """The step directory `path` names: itself, the newest complete step of a stage's checkpoint
    directory, or the step a file inside it belongs to (a .distcp or DeepSpeed shard). None if
    `path` is not part of a checkpoint."""
    path = Path(path)
    if path.is_dir() and not (path / MANIFEST).is_file():
        newest = CheckpointManager(path, 1, 1.0, 1).complete()
        if newest:
            return newest[0]
    for candidate in (path, *path.parents):
        if candidate.name.startswith(PREFIX) and (candidate / "strategy.json").is_file():
            return candidate
    return None


def read_step(step_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    """(strategy.json of the step, its consolidated model weights as fp32 CPU tensors)."""
    step_dir = Path(step_dir)
    problem = verify(step_dir)
    if problem:
        raise ValueError(f"{step_dir}: not a usable checkpoint: {problem}")
    meta = read_json(step_dir / "strategy.json")
    check_strategy_meta(meta)
    step = read_json(step_dir / MANIFEST).get("step")
    meta.setdefault("step", step if isinstance(step, int) else None)
    readers = {"state": _dcp_weights, "deepspeed": _deepspeed_weights}
    kind = next((k for k in readers if (step_dir / k).is_dir()), None)
    if kind is None:
        raise ValueError(f"{step_dir}: neither DCP shards (state/) nor a DeepSpeed checkpoint (deepspeed/)")
    try:
        state = readers[kind](step_dir / kind)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"{step_dir}: refused to load: {one_line(e)}") from None
    except CheckpointException as e:  # DCP's, a BaseException carrying each rank's error
        raise ValueError(f"{step_dir}: {one_line(e)}") from None
    return meta, {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()}


def _dcp_weights(path: Path) -> dict:
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    from clipav2.parallel.dcp_io import checked_reader

    reader = checked_reader(path)
    with warnings.catch_warnings(), weights_only_loads():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process": it is
        return _load_state_dict_from_keys("model", storage_reader=reader)["model"]


def _deepspeed_weights(path: Path) -> dict:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from clipav2.parallel.deepspeed_engine import TAG

    # zero_to_fp32 asks torch.load for full unpickling; weights_only_loads overrides it per call
    with weights_only_loads(), torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]), \
            contextlib.redirect_stdout(io.StringIO()):  # its progress lines, not ours
        return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=TAG)


def run_config(step_dir, cfg=None):
    """The config a step belongs to: `cfg`, else RUN_DIR/config.yaml beside its checkpoints."""
    if cfg is not None:
        return cfg
    from clipav2.config import load_config

    path = Path(step_dir).resolve().parents[2] / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{step_dir}: no {path} to say which model it is; give the recipe (--config)")
    return load_config(str(path))


def load_step_model(step_dir, cfg=None):
    """(model, stage, step): the stage's architecture with the step's weights. `cfg` defaults to
    the run's config.yaml; the architecture needs RUN_DIR's previous stage file for a later stage,
    exactly as training built it."""
    from clipav2.models.convert import load_weights
    from clipav2.train.stages import build_stage_model

    step_dir = Path(step_dir)
    meta, state = read_step(step_dir)
    cfg = run_config(step_dir, cfg)
    names = [s.name for s in cfg.stages]
    if meta["stage"] not in names:
        raise ValueError(f"{step_dir} is a checkpoint of stage {meta['stage']!r}, which the recipe does not have ({', '.join(names)})")
    index = names.index(meta["stage"])
    model = build_stage_model(cfg, index, step_dir.resolve().parents[2])
    load_weights(model, _shaped_like(state, model))
    return model, cfg.stages[index], meta.get("step")


def _shaped_like(state: dict, model) -> dict:
    """DeepSpeed keeps the 0-d temperature as a 1-element vector; DCP may list the non-persistent
    buffers. Anything else that does not fit is left for `load_weights` to name."""
    expected = model.state_dict()
    transient = {n for n, _ in model.named_buffers()} - set(expected)
    out = {}
    for k, v in state.items():
        if k in expected and v.shape != expected[k].shape and v.numel() == expected[k].numel() == 1:
            v = v.reshape(expected[k].shape)
        if k not in transient:
            out[k] = v
    return out
