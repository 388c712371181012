"""`clipav2 <command> ...`: each command lives in `clipav2/commands/<name>.py` with
`add_arguments(parser)` and `main(args) -> int`. Only the chosen command's module is imported,
so `clipav2 models` does not pay for DeepSpeed or the data stack."""
import argparse
import importlib
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
    lines = ["usage: clipav2 <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"clipav2: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"clipav2.commands.{COMMANDS[name][0]}")
    parser = argparse.ArgumentParser(prog=f"clipav2 {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
