"""The GPU check's records: the machine, the benchmark rows (one JSON object a line, tagged with
the check's row name), and the markdown table of them for docs/benchmarks.md.

    python tools/gpu_check_report.py env           # card, driver and versions
    python tools/gpu_check_report.py table ROWS    # the table of a rows.jsonl
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

COLUMNS = ("row", "trainer", "model", "px / tokens / T", "micro", "samples/s/GPU", "TFLOP/s", "MFU", "mem GiB",
           "SDPA kernels", "vs open_clip", "flags")
# the switches a row differs by; torch, python and the input kind are the same for every row (env)
FLAGS = ("precision", "strategy", "compile", "compile_s", "checkpointing", "attention", "fused_optimizer", "bf16_momentum",
         "optimizer", "micro_batch_search")


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def env() -> str:
    import torch

    def version(dist):
        from importlib.metadata import PackageNotFoundError, version as v
        try:
            return v(dist)
        except PackageNotFoundError:
            return "not installed"

    cuda = torch.cuda.is_available()
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    lines = [
        f"card: {torch.cuda.get_device_name() if cuda else 'no CUDA device (CPU run)'}",
        f"nvidia-smi: {smi or 'not available'}",
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version() if cuda else '-'}, "
        f"triton {version('triton')}, open_clip {version('open_clip_torch')}, Python {platform.python_version()}",
        f"commit: {_run(['git', 'rev-parse', '--short', 'HEAD']) or 'unknown (no .git)'}",
        f"PYTORCH_CUDA_ALLOC_CONF={os.environ.get('PYTORCH_CUDA_ALLOC_CONF', '')} "
        f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')}",
    ]
    return "\n".join(lines)


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def add_rows(name: str, rows: list[dict], rows_path: Path) -> list[dict]:
    """Append the rows one `clipav2 bench --json` printed, tagged with the check's row `name`."""
    tagged = [{"row": name, **r} for r in rows]
    with rows_path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in tagged)
    return tagged


def add_error(name: str, why: str, rows_path: Path) -> list[dict]:
    """A row without figures (skipped, failed, crashed), kept so the table shows it."""
    return add_rows(name, [{"trainer": "-", "error": why}], rows_path)


def _ratio(r: dict, rows: list[dict]) -> str:
    """Samples/s over open_clip's: its row in the same bench run, else one at the same shapes."""
    same = lambda b: all(b.get(k) == r.get(k) for k in ("model", "stage", "image_size", "micro_batch"))  # noqa: E731
    base = next((b for b in rows if b["row"] == r["row"] and b.get("trainer") == "open_clip"), None)
    base = base or next((b for b in rows if b.get("trainer") == "open_clip" and same(b)), None)
    if r.get("trainer") != "clipav2" or not base or r.get("error") or base.get("error") or not base["samples_per_s"]:
        return "-"
    return f"{r['samples_per_s'] / base['samples_per_s']:.2f}x"


def cells(r: dict, rows: list[dict]) -> tuple:
    if r.get("error") and "model" not in r:
        return (r["row"], r.get("trainer", "-")) + ("-",) * 8 + (r["error"], "")
    shape = f"{r['image_size']} / {r['kept_image_tokens']} / {r['text_len']}"
    flags = ", ".join(f"{k}={r['flags'][k]}" for k in FLAGS if k in r["flags"])
    if r.get("error"):
        measured = ("-",) * 4
    else:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        measured = (f"{r['samples_per_s_per_gpu']:.1f}", f"{r['tflops_per_gpu']:.1f}", mfu, f"{r['peak_memory_gib']:.1f}")
    return (r["row"], r["trainer"], r["model"], shape, str(r["micro_batch"])) + measured + (
        r["flags"].get("sdpa_kernels", "-"), r.get("error") or _ratio(r, rows), flags)


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r, rows)) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv == ["env"]:
        print(env())
    elif len(argv) == 2 and argv[0] == "table":
        print(table(load(Path(argv[1]))))
    else:
        print("usage: gpu_check_report.py env | table ROWS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
