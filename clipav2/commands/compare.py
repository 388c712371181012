"""`clipav2 compare RUN [RUN ...] [--plot out.png] [--out table.md] [key=value ...]`

Zero-shot accuracy against cost for several runs: a table of every evaluation with the samples,
GPU-hours and dollars spent at that point, and (`--plot`) top-1 against dollars and GPU-hours.
A RUN is a run directory, or a recipe (.yaml) that is first trained into its `run_dir` (resuming,
or skipped when done; the overrides apply to every recipe), so

    clipav2 compare configs/demo.yaml configs/demo_fullres.yaml --plot demo_vs_fullres.png

trains the CLIPA demo and its full-resolution baseline and draws the two.
"""
import subprocess
import sys
from pathlib import Path

from clipav2 import exitcodes


def add_arguments(parser):
    parser.add_argument("runs", nargs="+", help="run directories or recipes (.yaml) to train first")
    parser.add_argument("--plot", help="write the PNG plot here")
    parser.add_argument("--out", help="write the Markdown table here (default: print it)")


def _run_dir(item: str, overrides: list[str]) -> Path | int:
    """A recipe trained (in its own process, as `clipav2 train`) -> its run directory."""
    if not item.endswith((".yaml", ".yml")):
        return Path(item)
    from clipav2.config import ConfigError, load_config

    try:
        run_dir = Path(load_config(item, overrides).run_dir)
    except (ConfigError, OSError) as e:
        print(f"clipav2 compare: {item}: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    print(f"clipav2 compare: training {item} into {run_dir}", flush=True)
    code = subprocess.call([sys.executable, "-m", "clipav2", "train", item, *overrides])
    return run_dir if code == exitcodes.OK else code


def main(args) -> int:
    from clipav2.cost.accuracy import comparison_table, load_curve, write_accuracy_plot
    from clipav2.cost.ledger import LedgerError

    overrides = [a for a in args.runs if "=" in a and not Path(a).exists()]
    items = [a for a in args.runs if a not in overrides]
    curves = []
    for item in items:
        run_dir = _run_dir(item, overrides)
        if isinstance(run_dir, int):
            return run_dir
        try:
            curves.append(load_curve(run_dir))
        except LedgerError as e:
            print(f"clipav2 compare: {e}", file=sys.stderr)
            return exitcodes.CONFIG
    table = comparison_table(curves)
    notes = [n for c in curves for n in c.notes]
    text = table + ("\n\n" + "\n".join(f"- {n}" for n in notes) if notes else "") + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    if args.plot:
        write_accuracy_plot(curves, args.plot)
        print(f"wrote {args.plot}")
    return exitcodes.OK
