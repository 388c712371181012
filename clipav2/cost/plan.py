"""What a recipe costs before it runs: per stage tokens, samples, steps, training FLOPs and — given
an accelerator, a GPU count and either an MFU or a measured samples/s — GPU-hours, wall hours and
dollars. `clipav2 plan` prints it; the projection and the budget report reuse `stage_flops`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from clipav2.config import Config
from clipav2.accelerators import Accelerator
from clipav2.stage import resolve


def stage_flops(cfg: Config, index: int) -> int:
    """Training FLOPs of one sample in stage number `index` (3 x forward, kept image tokens, stage
    text length)."""
    return resolve(cfg, index).train_flops_per_sample


@dataclass
class StagePlan:
    name: str
    image_size: int
    kept_image_tokens: int
    text_len: int
    samples: int
    global_batch: int
    steps: int
    warmup_steps: int
    peak_lr: float
    train_flops_per_sample: int
    train_flops: int
    checkpointing_factor: float  # FLOPs the GPUs execute over train_flops: 1 + recomputation's share
    gpu_hours: float | None = None
    wall_hours: float | None = None
    cost_usd: float | None = None


@dataclass
class Hardware:
    """Where the plan runs: `mfu` (model FLOPs over the accelerator's peak, recomputation not
    counted, as `clipav2 bench` and the metrics report it) or `samples_per_s_per_gpu` measured on
    the FIRST stage (e.g. by `clipav2 bench`; the other stages are scaled by the FLOPs the GPUs
    execute, recomputation included, i.e. the same hardware utilisation)."""

    accelerator: Accelerator
    gpus: int
    price_per_gpu_hour: float
    mfu: float | None = None
    samples_per_s_per_gpu: float | None = None

    def __post_init__(self):
        if self.gpus < 1:
            raise ValueError(f"--gpus: {self.gpus} must be >= 1")
        if (self.mfu is None) == (self.samples_per_s_per_gpu is None):
            raise ValueError("give exactly one of --mfu and --samples-per-s")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise ValueError(f"--mfu: {self.mfu} must be in (0, 1]")
        if self.samples_per_s_per_gpu is not None and self.samples_per_s_per_gpu <= 0:
            raise ValueError(f"--samples-per-s: {self.samples_per_s_per_gpu} must be > 0")
        if self.mfu is not None and not self.accelerator.peak_flops:
            raise ValueError(f"--mfu needs a peak FLOP/s, and {self.accelerator.name} has none: use --samples-per-s")

    def flops_per_gpu_second(self, first_stage_flops: int, first_stage_factor: float = 1.0) -> float:
        """Model FLOPs per GPU-second: `mfu` x peak, or the measured rate x the first stage's
        FLOPs, corrected for how much of its work was recomputation relative to each stage's."""
        if self.mfu is not None:
            return self.mfu * self.accelerator.peak_flops
        return self.samples_per_s_per_gpu * first_stage_flops * first_stage_factor


def plan(cfg: Config, hardware: Hardware | None = None) -> dict:
    """The plan as plain data (the `--json` document)."""
    rows = []
    for s in (resolve(cfg, i) for i in range(len(cfg.stages))):
        per_sample = s.train_flops_per_sample
        factor = 1 + s.recompute_flops_per_sample / per_sample
        rows.append(StagePlan(s.name, s.image_size, s.kept_image_tokens, s.text_len, s.samples, s.global_batch,
                              s.steps, s.warmup_steps, s.peak_lr, per_sample, per_sample * s.samples, factor))
    doc = {"model": cfg.model.name, "checkpointing": cfg.model.checkpointing,
           "total_train_flops": sum(r.train_flops for r in rows), "budget_usd": cfg.cost.budget_usd}
    if hardware is not None:
        first = rows[0]
        rate = hardware.flops_per_gpu_second(first.train_flops_per_sample, first.checkpointing_factor)
        for r in rows:
            # an MFU holds across stages as given; a measured rate holds in executed FLOPs
            executed = 1.0 if hardware.mfu is not None else r.checkpointing_factor
            r.gpu_hours = r.train_flops * executed / rate / 3600.0
            r.wall_hours = r.gpu_hours / hardware.gpus
            r.cost_usd = r.gpu_hours * hardware.price_per_gpu_hour
        doc.update(gpu=hardware.accelerator.name, gpus=hardware.gpus, price_per_gpu_hour=hardware.price_per_gpu_hour,
                   mfu=(rate / hardware.accelerator.peak_flops) if hardware.accelerator.peak_flops else None,
                   total_gpu_hours=sum(r.gpu_hours for r in rows), total_wall_hours=sum(r.wall_hours for r in rows),
                   total_cost_usd=sum(r.cost_usd for r in rows))
    doc["stages"] = [{k: v for k, v in asdict(r).items() if v is not None} for r in rows]
    return doc
