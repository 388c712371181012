"""`clipav2 eval CONFIG --checkpoint PATH [--data SET] [--retrieval SET] [--stage NAME] [--json]`:
zero-shot top-1/top-5 of a checkpoint (ours, or open_clip's for the config's model name) on a
labelled set, and recall@1/5/10 on an image-text set. The stage (default: the one the checkpoint
was saved by, else the recipe's last) decides image size, eval transform and text length.
`--checkpoint` may also be a resumable checkpoint of a stage still training,
RUN_DIR/checkpoints/<stage>/step_N (or RUN_DIR/checkpoints/<stage> for its newest step), written
by any strategy."""
import json
import sys
from pathlib import Path

from clipav2 import exitcodes
from clipav2.config import ConfigError, load_config
from clipav2.models.weights_file import WeightsFileError


def add_arguments(parser) -> None:
    parser.add_argument("config", help="the recipe the checkpoint belongs to (model, stages, eval sets)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.eval=/data/imagenet/val")
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/<stage>.safetensors, RUN_DIR/checkpoints/<stage>/step_N, or an open_clip checkpoint")
    parser.add_argument("--data", help="zero-shot set: ImageFolder directory or labelled shards (default: data.eval)")
    parser.add_argument("--retrieval", help="image-text shards for recall@k (default: data.retrieval)")
    parser.add_argument("--stage", help="evaluate as this stage (default: the checkpoint's stage, else the last)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _choose_stage(cfg, args, step_dir):
    if args.stage:
        return cfg.stage(args.stage)
    from clipav2.models.convert import read_metadata

    if step_dir is not None:
        from clipav2.safe_load import read_json

        meta = read_json(step_dir / "strategy.json")
        saved = meta.get("stage") if isinstance(meta, dict) else None
    else:
        saved = read_metadata(args.checkpoint).get("meta", {}).get("stage") if args.checkpoint.endswith(".safetensors") else None
    names = [s.name for s in cfg.stages]
    return cfg.stage(saved) if saved in names else cfg.stages[-1]


def checkpoint_kind(path: str):
    """The step directory `path` is (None for a weights file); a one-line error for a shard of a
    checkpoint or a path that is neither."""
    from clipav2.train.consolidate import find_step_dir

    step_dir = find_step_dir(path)
    if Path(path).is_file() and step_dir is None and Path(path).suffix != ".distcp":
        return None
    if step_dir is not None and Path(path).resolve() in (step_dir.resolve(), step_dir.parent.resolve()):
        return step_dir
    if step_dir is not None:
        raise ConfigError(f"--checkpoint: {path} is one shard of the checkpoint {step_dir}; pass that directory")
    if Path(path).suffix == ".distcp":
        raise ConfigError(f"--checkpoint: {path} is a shard of a sharded checkpoint; pass its step directory "
                          f"(RUN_DIR/checkpoints/<stage>/step_N)")
    if Path(path).is_dir():
        raise ConfigError(f"--checkpoint: {path} is a directory but not a checkpoint step (no manifest.json, strategy.json)")
    raise ConfigError(f"--checkpoint: no such file {path!r}")


def _eval_sets(cfg, args) -> None:
    """--data / --retrieval over the config's sets (the demo's generated set by default), checked."""
    if cfg.data.demo and not cfg.data.eval:
        cfg.data.eval = str(Path(cfg.run_dir) / "demo_data" / "eval")
    cfg.data.eval = args.data or cfg.data.eval
    cfg.data.retrieval = args.retrieval or cfg.data.retrieval
    if not cfg.data.eval and not cfg.data.retrieval:
        raise ConfigError("--data: no evaluation set (give --data / --retrieval, or data.eval in the config)")
    for key, path in (("--data", cfg.data.eval), ("--retrieval", cfg.data.retrieval)):
        if path and not Path(path).is_dir():  # shards: each a regular file (not /dev/null, not a FIFO)
            from clipav2.data import expand_urls

            try:
                expand_urls(path)
            except (FileNotFoundError, ValueError) as e:
                raise ConfigError(f"{key}: {e}") from None


def _load(args, cfg, step_dir):
    """The model of a weights file or of a checkpoint step directory (any engine)."""
    if step_dir is not None:
        from clipav2.train.consolidate import load_step_model

        return load_step_model(step_dir, cfg)[0]
    from clipav2.models.convert import load_model

    return load_model(args.checkpoint, name=cfg.model.name, attention=cfg.model.attention)


def main(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides)
        step_dir = checkpoint_kind(args.checkpoint)
        _eval_sets(cfg, args)
        stage = _choose_stage(cfg, args, step_dir)
    except (ConfigError, WeightsFileError, ValueError) as e:  # ValueError: an unreadable strategy.json
        print(f"clipav2 eval: {e}", file=sys.stderr)
        return exitcodes.CONFIG

    import torch

    from clipav2.eval.run import describe, evaluate
    from clipav2.eval.sets import ClassMismatch
    from clipav2.train.stages import enter_stage

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = _load(args, cfg, step_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"clipav2 eval: --checkpoint: {' '.join(str(e).split())}", file=sys.stderr)
        return exitcodes.CONFIG
    enter_stage(model, stage)
    try:
        result = evaluate(model.to(device), cfg, stage, device)
    except ClassMismatch as e:
        print(f"clipav2 eval: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    if args.json:
        print(json.dumps({"checkpoint": args.checkpoint, "stage": stage.name, **result}))
    else:
        print(describe(stage.name, result))
    return exitcodes.OK
