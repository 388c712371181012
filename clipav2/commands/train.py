"""`clipav2 train CONFIG [key=value ...] [--stage NAME]`: run every stage of a recipe in order,
resuming where RUN_DIR stopped. The whole config (data paths included) is checked before anything
is built, so a typo costs a second, not a queue slot."""
import os
import sys

from clipav2 import exitcodes
from clipav2.config import ConfigError, load_config


def add_arguments(parser) -> None:
    parser.add_argument("config", help="a recipe YAML, e.g. configs/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. stages.pretrain.samples=4096 run_dir=runs/x")
    parser.add_argument("--stage", help="run only this stage (resuming it if RUN_DIR has a checkpoint of it)")
    parser.add_argument("--fresh", action="store_true",
                        help="start over in RUN_DIR: its old state is moved to RUN_DIR/previous/<time>/ (never deleted)")


def launcher_world_size() -> int:
    """The world size the launcher promises (clipav2.launcher), its variables checked with the
    config, before any process group exists."""
    from clipav2.launcher import LauncherEnvError, launcher_world_size as promised

    try:
        return promised()
    except LauncherEnvError as e:
        raise ConfigError(f"launcher environment: {e}") from None


def check_run_dir(cfg) -> None:
    """RUN_DIR must be a directory this process can create and write: an empty value would put a
    run's files in the working directory, a file or an unwritable place fails only after startup."""
    from pathlib import Path

    if not str(cfg.run_dir).strip():
        raise ConfigError("run_dir: empty; name the run's directory, e.g. run_dir=runs/demo")
    path = Path(cfg.run_dir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir: {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"run_dir: cannot create {path}: {e.strerror}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"run_dir: {path} is not writable")


def check_text(cfg) -> None:
    """The vocabulary and each stage's text reduction (NLTK data for the syntax masks) load now,
    not after the model and the engine are up."""
    from clipav2.text import VocabNotFound, find_vocab, make_text_transform

    try:
        find_vocab(cfg.data.vocab)
    except VocabNotFound as e:
        raise ConfigError(f"data.vocab: {' '.join(str(e).split())}") from None
    for stage in cfg.stages:
        try:
            make_text_transform(stage, vocab=cfg.data.vocab, seed=cfg.seed)
        except (ImportError, LookupError, OSError, ValueError) as e:
            raise ConfigError(f"stages.{stage.name}.text_reduction: {' '.join(str(e).split())}") from None


def check_start(cfg, name: str) -> None:
    """`--stage NAME` of a later stage starts from the previous stage's weights file: it must exist
    (or the stage has its own init_from) before anything, demo data included, is written."""
    from clipav2.train.stages import stage_weights

    names = [s.name for s in cfg.stages]
    index = names.index(cfg.stage(name).name)
    if index == 0 or cfg.stages[index].init_from:
        return
    prev = stage_weights(cfg.run_dir, names[index - 1])
    if not prev.is_file():
        raise ConfigError(f"--stage {name}: starts from stage {names[index - 1]!r}, and {prev} does not exist; "
                          f"run that stage first, or set stages.{name}.init_from")


def _say(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(message, flush=True)


def main(args) -> int:
    try:
        cfg = load_config(args.config, args.overrides, world_size=launcher_world_size(), check_data=True)
        if args.stage is not None:
            check_start(cfg, args.stage)
        check_text(cfg)
        check_run_dir(cfg)  # last: it creates RUN_DIR
    except ConfigError as e:
        print(f"clipav2 train: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    if not (cfg.data.eval or cfg.data.retrieval or cfg.data.demo):
        _say("note: no data.eval or data.retrieval in the config: this run will not evaluate")
    from clipav2.train.loop import train  # heavy imports only once the config is known good

    return train(cfg, only_stage=args.stage, fresh=args.fresh)
