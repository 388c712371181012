"""One benchmark row: what was run (model, stage, shapes, flags, machine) and what it measured,
plus the text table and JSON the command prints."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from clipav2.perf.measure import Window
from clipav2.cost.mfu import achieved_tflops, mfu


@dataclass
class Row:
    trainer: str  # "clipav2" | "open_clip"
    model: str
    stage: str
    image_size: int
    kept_image_tokens: int
    text_len: int
    device: str
    world_size: int
    micro_batch: int
    grad_accum: int
    steps: int
    warmup: int
    flags: dict = field(default_factory=dict)
    train_flops_per_sample: float = 0.0
    peak_tflops: float | None = None
    samples_per_s: float = 0.0
    samples_per_s_per_gpu: float = 0.0
    tflops_per_gpu: float = 0.0
    mfu: float | None = None
    peak_memory_gib: float = 0.0
    data_wait_fraction: float = 0.0
    step_s_median: float = 0.0
    step_s: list = field(default_factory=list)
    loss: float | None = None
    error: str | None = None  # e.g. "out of memory": the row is kept so the table shows it

    def fill(self, window: Window, peak_memory_bytes: int, loss: float | None) -> "Row":
        samples = self.micro_batch * self.grad_accum * self.world_size * window.steps
        self.samples_per_s = samples / window.seconds
        self.samples_per_s_per_gpu = self.samples_per_s / self.world_size
        self.tflops_per_gpu = achieved_tflops(self.train_flops_per_sample, self.samples_per_s_per_gpu)
        self.mfu = mfu(self.train_flops_per_sample, self.samples_per_s_per_gpu, self.peak_tflops)
        self.peak_memory_gib = peak_memory_bytes / 2**30
        self.data_wait_fraction = window.data_wait_fraction
        self.step_s = window.step_seconds
        self.step_s_median = statistics.median(window.step_seconds)
        self.loss = loss
        return self

    def as_dict(self) -> dict:
        return asdict(self)


HEADER = ("trainer", "model", "stage", "px", "tok", "L", "micro", "samples/s/GPU", "TFLOP/s", "MFU",
          "mem GiB", "wait", "ratio")


def _baseline_of(rows: list[Row], i: int) -> Row | None:
    """The open_clip row that follows row i for the same model and stage (the bench prints ours
    first, then its baseline), or row i itself when it is open_clip's."""
    r = rows[i]
    if r.trainer == "open_clip":
        return r
    return next((b for b in rows[i + 1:] if b.trainer == "open_clip" and (b.model, b.stage) == (r.model, r.stage)), None)


def table(rows: list[Row]) -> str:
    """Rows side by side; `ratio` is a clipav2 row's samples/s over its open_clip row's."""
    lines = [HEADER]
    for i, r in enumerate(rows):
        ref = _baseline_of(rows, i)
        ok = ref is not None and not r.error and not ref.error and ref.samples_per_s
        ratio_ = f"{r.samples_per_s / ref.samples_per_s:.2f}" if ok else "-"
        if r.error:
            cells = ("-",) * 5
        else:
            cells = (f"{r.samples_per_s_per_gpu:.1f}", f"{r.tflops_per_gpu:.2f}",
                     f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-", f"{r.peak_memory_gib:.2f}",
                     f"{100 * r.data_wait_fraction:.1f}%")
        lines.append((r.trainer, r.model, r.stage, str(r.image_size), str(r.kept_image_tokens), str(r.text_len),
                      str(r.micro_batch)) + cells + (r.error or ratio_,))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def ratio(rows: list[Row]) -> float | None:
    """clipav2 samples/s over open_clip's for the first pair in `rows` (None without both)."""
    ours = next((r for r in rows if r.trainer == "clipav2" and not r.error), None)
    base = next((r for r in rows if r.trainer == "open_clip" and not r.error), None)
    return ours.samples_per_s / base.samples_per_s if ours and base else None
