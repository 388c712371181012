"""`clipav2 budget RUN_DIR [--out report.md] [--plot report.png] [--html report.html] [--price P]`

The cost report of a finished, running or copied run directory: per stage samples, GPU-hours by
kind, dollars, samples/s/GPU, MFU and projected cost, the budget lines, the paper's A100 figures,
a plot of cumulative dollars against samples seen and, when RUN_DIR/eval.jsonl has evaluations,
one of zero-shot top-1 against dollars and GPU-hours (PLOT_accuracy.png beside PLOT). Needs
RUN_DIR/ledger.json only.
"""
import sys
from pathlib import Path

from clipav2 import exitcodes


def add_arguments(parser):
    parser.add_argument("run_dir", help="the run directory (holds ledger.json, metrics.jsonl, config.yaml)")
    parser.add_argument("--out", help="write the Markdown report here (default: print it)")
    parser.add_argument("--plot", help="write the PNG plot here")
    parser.add_argument("--html", help="write a self-contained HTML report here")
    parser.add_argument("--price", help="re-price the run at this USD per GPU-hour")


def main(args) -> int:
    from clipav2.cost.ledger import LedgerError
    from clipav2.accelerators import PriceError, parse_price
    from clipav2.cost.render import to_html, to_markdown
    from clipav2.cost.report import build_report
    from clipav2.cost.run_data import load_run

    try:
        price = None if args.price is None else parse_price(args.price)
        run = load_run(args.run_dir, price)
        report = build_report(run)
    except (LedgerError, PriceError) as e:
        print(f"clipav2 budget: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    png = accuracy_png = None
    if args.plot or args.html:
        from clipav2.cost.plot import write_plot

        png = Path(args.plot) if args.plot else Path(args.html).with_suffix(".png")
        write_plot(run, report, png)
        accuracy_png = _accuracy_plot(args.run_dir, png)
    md = to_markdown(report, _relative(png, args.out) if png else None)
    if png and accuracy_png:
        md += f"\n![zero-shot top-1 against cost]({_relative(accuracy_png, args.out)})\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md)
        print(f"wrote {args.out}")
    else:
        print(md)
    if args.html:
        Path(args.html).write_text(to_html(report, png))
        print(f"wrote {args.html}")
    for written in (args.plot, accuracy_png):
        if written:
            print(f"wrote {written}")
    return exitcodes.OK


def _accuracy_plot(run_dir, png: Path):
    from clipav2.cost.accuracy import load_curve, write_accuracy_plot

    curve = load_curve(run_dir)
    if not curve.points:
        return None
    return write_accuracy_plot([curve], png.with_name(png.stem + "_accuracy.png"))


def _relative(png: Path, out) -> str:
    if not out:
        return str(png)
    try:
        return str(png.resolve().relative_to(Path(out).resolve().parent))
    except ValueError:
        return str(png.resolve())
