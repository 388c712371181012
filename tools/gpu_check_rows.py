"""The GPU check's benchmark rows, one after another in this process through `clipav2 bench`
itself (torch, open_clip and the CUDA context load once; dynamo's state is reset before each row,
so a row compiles as a fresh process would, from the on-disk inductor cache). Each row is
appended to OUT/rows.jsonl and OUT/table.md rewritten the moment it ends; a guard before each
skips a row the time left cannot hold. A row that fails is recorded with its error and the next
one runs; if the process dies, tools/gpu_check.sh runs this again, which
records the row it died in (`--interrupted`) and goes on after it.

    python tools/gpu_check_rows.py --out OUT --deadline EPOCH_S --marker FILE [--smoke]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path

import gpu_check_report as report

# name, seconds the row needs at least (the guard: building the model, compiling every graph it
# needs from a cold cache, the steps), then `clipav2 bench` arguments, filled from the shapes below; every row runs at bf16 on CUDA (precision auto) with synthetic inputs. The
# rows the targets name come first (84 and 224 px beside open_clip, bigG on one card), so a short
# budget cuts the bf16-momentum comparison and the batch search first.
ROWS = (
    ("h14_84", 60, "{h14} {fused} model.compile=false --stage pretrain --strategy single --checkpointing none "
                   "--micro-batch {mb84} --baseline open_clip"),
    ("h14_84_compiled", 180, "{h14} {fused} --stage pretrain --strategy single --checkpointing none "
                            "--micro-batch {mb84} {compile}"),
    ("h14_224_mask03", 240, "{h14} {fused} --stage finetune224 --strategy single --checkpointing every_2 "
                           "--micro-batch {mb224} {compile} --baseline open_clip"),
    ("bigg_84_fsdp", 240, "{bigg} --stage pretrain --strategy fsdp --checkpointing all --micro-batch {mbg} {compile}"),
    ("h14_84_compiled_bf16m", 90, "{h14} parallel.bf16_momentum=true --stage pretrain --strategy single "
                                  "--checkpointing none --micro-batch {mb84} {compile}"),
    # the largest micro-batch that fits, only with time to spare: every probe builds bigG again
    # and compiles its micro-batch's graphs
    ("bigg_84_fsdp_largest", 400, "{bigg} stages.pretrain.micro_batch={mbg} --stage pretrain --strategy fsdp "
                                  "--checkpointing all --micro-batch auto --search-max {search_max} "
                                  "--search-probes 4 {compile}"),
)
FUSED = "parallel.bf16_momentum=false parallel.fused_optimizer=true"


def shapes(smoke: bool) -> dict:
    """The recipes at their real shapes. For the CPU smoke run the tiny model stands in, at one
    shape for every row (32 px, all 16 patches, text 8, micro-batch 8), and the compiled rows
    compile on the CPU inductor: each checkpointing variant's graphs then build once (minutes on
    2 cores) and later rows load them from the on-disk cache."""
    env = os.environ.get
    if smoke:
        tiny = ("model.name=tiny stages.pretrain.image_size=32 stages.finetune224.image_size=32 "
                "stages.finetune224.image_mask_ratio=0.0 stages.finetune224.text_len=8")
        return dict(h14=f"configs/h14.yaml {tiny}", bigg=f"configs/bigg14.yaml {tiny}", fused=FUSED,
                    mb84=env("H14_MB_84", "8"), mb224=env("H14_MB_224", "8"), mbg=env("BIGG_MB", "8"),
                    search_max=8, compile="--compile", device="cpu")
    return dict(h14="configs/h14.yaml", bigg="configs/bigg14.yaml", fused=FUSED, mb84=env("H14_MB_84", "512"),
                mb224=env("H14_MB_224", "128"), mbg=env("BIGG_MB", "256"), search_max=2048, compile="--compile",
                device="cuda")


def bench(argv: list[str]) -> tuple[int, list[dict], str]:
    """`clipav2 bench ARGV --json` in this process: (exit code, rows, anything else it printed)."""
    import torch

    from clipav2.cli import main

    torch._dynamo.reset()  # no compiled graph, recompile count or dynamic-shape guess of an earlier row
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["bench", *argv, "--json"])
    text = out.getvalue()
    start = text.find("[\n") if text.startswith("[") else text.rfind("\n[\n") + 1
    try:
        return code, json.loads(text[start:]) if start >= 0 else [], text[:start]
    except ValueError:
        return code, [], text


def run_rows(out: Path, deadline: float, marker: Path, smoke: bool, steps: int, warmup: int) -> None:
    rows_path, table_path = out / "rows.jsonl", out / "table.md"
    done = {r["row"] for r in report.load(rows_path)}
    s = shapes(smoke)
    for name, need, template in ROWS:
        if name in done:
            continue
        left = deadline - time.time()
        if left < need:
            why = f"skipped: {left:.0f} s of the budget left, needs ~{need} s"
            print(f"== {name}: {why}", flush=True)
            report.add_error(name, why, rows_path)
        else:
            argv = template.format(**s).split() + ["--device", s["device"], "--steps", str(steps),
                                                   "--warmup", str(warmup)]
            print(f"== {name}: clipav2 bench {' '.join(argv)}", flush=True)
            marker.write_text(name)
            t = time.time()
            try:
                code, rows, other = bench(argv)
                print(other, end="", file=sys.stderr)
                error = None if rows else f"exit {code}, no result (see log.txt)"
            except Exception as e:  # noqa: BLE001 - recorded, and the next row runs
                traceback.print_exc()
                rows, error = [], f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            marker.write_text("")
            new = report.add_error(name, error, rows_path) if error else report.add_rows(name, rows, rows_path)
            every = report.load(rows_path)
            for r in new:
                print("  " + " | ".join(report.cells(r, every)), flush=True)
            print(f"   {time.time() - t:.0f} s", flush=True)
        table_path.write_text(report.table(report.load(rows_path)) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds by which the rows must end")
    p.add_argument("--marker", type=Path, required=True, help="file naming the row in flight")
    p.add_argument("--smoke", action="store_true", help="the CPU smoke run: tiny shapes on the CPU")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--interrupted", metavar="REASON", help="record the row in flight as REASON and stop")
    a = p.parse_args()
    if a.interrupted is not None:
        name = a.marker.read_text().strip() if a.marker.exists() else ""
        if name and name not in {r["row"] for r in report.load(a.out / "rows.jsonl")}:
            report.add_error(name, a.interrupted, a.out / "rows.jsonl")
            (a.out / "table.md").write_text(report.table(report.load(a.out / "rows.jsonl")) + "\n")
            print(f"== {name}: {a.interrupted}", flush=True)
        a.marker.write_text("")
        return 0
    run_rows(a.out, a.deadline, a.marker, a.smoke, a.steps, a.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
