#!/usr/bin/env python
"""The budget report as a script, for cluster users who call scripts:

    python tools/budget_report.py RUN_DIR [--out report.md] [--plot report.png] [--html report.html] [--price P]

Same as `clipav2 budget`."""
import sys

from clipav2.cli import main

if __name__ == "__main__":
    sys.exit(main(["budget", *sys.argv[1:]]))
