"""`clipav2 <command> ...`: each command lives in `clipav2/commands/<name>.py` with
`add_arguments(parser)` and `main(args) -> int`. Only the chosen command's module is imported,
so `clipav2 models` does not pay for DeepSpeed or the data stack.

Options and `key=value` overrides may come in any order (`clipav2 train CONFIG --stage finetune
run_dir=/tmp/x`). Output cut short by a closed pipe (`clipav2 models --json | head`) ends quietly
with status 141, as a tool killed by SIGPIPE would."""
import argparse
import importlib
import os
import sys

# name -> (module under clipav2.commands, one-line help)
COMMANDS = {
    "train": ("train", "run every stage of a recipe, resuming where RUN_DIR stopped"),
    "eval": ("eval", "zero-shot classification / retrieval of a checkpoint"),
    "plan": ("plan", "per-stage samples, steps, FLOPs, GPU-hours and cost of a recipe"),
    "budget": ("budget", "the cost report of a run directory"),
    "compare": ("compare", "zero-shot accuracy against cost for several runs (trains recipes first)"),
    "models": ("models", "list the architectures with parameters and GFLOPs"),
    "convert": ("convert", "convert checkpoints to or from open_clip's layout"),
    "text": ("text", "tokenizer and text-reduction tools (preview)"),
    "data": ("data", "build, generate and inspect webdataset shards"),
    "bench": ("bench", "benchmark a training stage: samples/s, MFU, memory"),
}


def _usage() -> str:
    lines = ["usage: clipav2 <command> [options]   (clipav2 --version)", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Positionals (overrides) may follow options; argparse cannot intermix under subcommands."""
    if parser._subparsers is not None:
        return parser.parse_args(argv)
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except BrokenPipeError:
        # the reader left (`| head`): send what is still buffered nowhere, and exit without a traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from clipav2 import __version__

        print(f"clipav2 {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"clipav2: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"clipav2.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"clipav2 {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = _parse(parser, argv[1:])
    code = int(module.main(args) or 0)
    sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at interpreter exit
    return code


if __name__ == "__main__":
    sys.exit(main())
