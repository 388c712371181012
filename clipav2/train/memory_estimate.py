"""Per-rank memory of a training step measured by torch's own tracker, without a GPU: the
stage's real engine and step (`clipav2.train.step.TrainStep`, as the loop builds it) run one step on
fake tensors (FakeTensorMode: shapes and dtypes, no data) in a fake process group of the job's
world size, under `torch.distributed._tools.fsdp2_mem_tracker.FSDPMemTracker` (fsdp) or
`torch.distributed._tools.mem_tracker.MemTracker` (single, ddp), as torchtitan's
scripts/estimate/estimation.py does. The optimizer state is created before the tracked step, as
every step but the first has it. ddp is tracked through `single`'s engine in the same fake world
(DDP's reducer reads parameter data, which fake tensors lack); DeepSpeed is not tracked.

Fake CUDA tensors need a CUDA build with a device for autograd, so the step runs on fake *CPU*
tensors under CPU bf16 autocast, whose casting rules match CUDA's for everything the model
calls (linear and SDPA in bf16, LayerNorm and the loss in fp32; SDPA's fused CPU kernel keeps
the output and log-sum-exp as flash attention does). The CUDA allocator's 512-byte rounding
and fragmentation are not modelled.

`depths=None` runs the full model (minutes for H/14). Otherwise three small models (two or three
blocks per tower) are tracked and extrapolated per block: the step's peak is the largest of the
peaks of its segments (forward, each tower's blocks in backward, the rest of the backward, the
optimizer step), and each segment's peak is linear in the depth of each tower, so it is
extrapolated on its own before the largest is taken.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
from copy import deepcopy

import torch
import torch.distributed as dist

from clipav2.accelerators import GIB

CATEGORIES = ("parameters", "gradients", "optimizer", "activations", "temporaries")

# the trackers' reference types -> our categories (FSDP's all-gather output holds the unsharded
# parameters, its reduce-scatter input the unsharded gradients)
_CATEGORY = {
    "Parameter": "parameters", "Buffer": "parameters", "Sharded Param": "parameters",
    "Unsharded Param": "parameters", "All Gather": "parameters",
    "Gradient": "gradients", "Sharded Grad": "gradients", "Unsharded Grad": "gradients",
    "Reduce Scatter": "gradients",
    "Optstate": "optimizer", "OptState": "optimizer",
    "Activation": "activations", "Inputs": "activations", "Other": "activations",
    "Temp": "temporaries",
}


def _segment(tracker) -> str:
    """Where the step is: the optimizer step, or forward/backward, in which tower's blocks."""
    if tracker._in_opt:
        return "optimizer"
    where = "blocks of visual" if any("visual.blocks" in p for p in tracker._mod_tracker.parents) else \
        "blocks of text" if any("text.blocks" in p for p in tracker._mod_tracker.parents) else "rest"
    return f"{'backward' if tracker._mod_tracker.is_bw else 'forward'} {where}"


def _segment_tracker(base):
    """`base` (a torch memory tracker) that also keeps the peak snapshot of each segment."""

    class SegmentPeaks(base):
        def __init__(self, *args):
            super().__init__(*args)
            self.segments: dict[str, dict] = {}

        def _update_peak_stats(self, peak_state):  # called after every op the tracker sees
            super()._update_peak_stats(peak_state)
            key = _segment(self)
            for snap in self._curr_mem_snap.values():
                if snap["Total"] > self.segments.get(key, {}).get("Total", -1):
                    self.segments[key] = deepcopy(snap)

    return SegmentPeaks


def _by_category(snap: dict) -> dict:
    out = dict.fromkeys(CATEGORIES, 0)
    for key, value in snap.items():
        name = getattr(key, "value", key)
        if name != "Total":
            out[_CATEGORY.get(name, "activations")] += value
    out["total"] = sum(out[c] for c in CATEGORIES)
    return out


class _FakeWorld:
    """A fake process group of `world_size` ranks (this process is rank 0) for the estimate."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.owns = False

    def __enter__(self):
        from torch.testing._internal.distributed.fake_pg import FakeStore

        from clipav2.parallel.env import World

        if self.world_size > 1 or not dist.is_initialized():
            if dist.is_initialized():
                raise RuntimeError("the memory estimate needs its own (fake) process group; one is already initialised")
            dist.init_process_group("fake", rank=0, world_size=self.world_size, store=FakeStore())
            self.owns = True
        return World(rank=0, world_size=self.world_size, device=torch.device("cpu"))

    def __exit__(self, *exc):
        if self.owns:
            dist.destroy_process_group()


def _outside_fake(fn):
    """`fn` called outside the fake mode."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    def call(*args, **kwargs):
        with unset_fake_temporarily():
            return fn(*args, **kwargs)

    return call


def track_step(cfg, index: int, world_size: int, micro_batch: int, depths: tuple[int, int] | None = None) -> dict:
    """The tracked per-rank peak of one step of stage `index` at `micro_batch` per rank:
    {"segments": {segment: {category: bytes, "total": bytes}}, "peak": {...}} where "peak" is the
    largest segment. `depths`: (image blocks, text blocks) of a reduced model, None: as configured."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.modules.module import register_module_forward_pre_hook

    from clipav2.data import normalize
    from clipav2.models.clip import CLIP
    from clipav2.stage import resolve
    from clipav2.train.step import TrainStep

    cfg = deepcopy(cfg)
    cfg.parallel.precision = "bf16_autocast" if cfg.parallel.precision == "auto" else cfg.parallel.precision
    cfg.model.compile = False  # the tracker sees eager ops; compile changes no saved tensor
    arch = resolve(cfg, index).arch
    if depths is not None:
        arch = dataclasses.replace(arch, vision=dataclasses.replace(arch.vision, depth=depths[0]),
                                   text=dataclasses.replace(arch.text, depth=depths[1]))
    normalize(torch.zeros(1, 3, 1, 1, dtype=torch.uint8))  # its cached constants stay real tensors
    with torch.device("meta"):
        model = CLIP(arch)  # no storage; the engine's .to(device) makes fake tensors of it
    with _FakeWorld(world_size) as world, FakeTensorMode(allow_non_fake_inputs=True):
        stage = resolve(cfg, index, world_size, arch=arch).with_micro_batch(cfg, micro_batch)
        with _mesh_outside_fake():
            train_step = TrainStep(_engine_config(cfg, world_size), stage, world, model)
        del model
        engine = train_step.engine
        _create_optimizer_state(engine.module, train_step.optimizer)
        px = stage.image_size
        batches = [{"images": torch.empty(micro_batch, 3, px, px, dtype=torch.uint8),
                    "text": torch.ones(micro_batch, stage.text_len, dtype=torch.long)} for _ in range(stage.grad_accum)]
        tracker = _make_tracker(engine, train_step.optimizer)
        root = engine.wrapped  # the module the step calls first
        # the trackers' per-module statistics allow one forward per step: reset them at each
        # micro-step's, before the trackers' own hooks see it
        hook = register_module_forward_pre_hook(lambda module, _: tracker.reset_mod_stats() if module is root else None)
        with tracker:
            train_step.run(batches, 0)
        hook.remove()
        segments = {k: _by_category(v) for k, v in tracker.segments.items()}
        del engine, train_step, tracker, batches
    gc.collect()
    return {"segments": segments, "peak": max(segments.values(), key=lambda s: s["total"])}


def _engine_config(cfg, world_size: int):
    """The recipe the stage's engine is built from; ddp's is `single`'s in the same fake world:
    DDP's C++ reducer reads parameter data, which fake tensors have none of, and a DDP rank holds
    what a single process does (the replica, its gradients, which are views of the all-reduce
    buckets, the optimizer)."""
    if cfg.parallel.strategy == "ddp":
        cfg.validate(world_size)
        cfg.parallel.strategy = "single"  # on track_step's copy
    return cfg


@contextlib.contextmanager
def _mesh_outside_fake():
    """DeviceMesh must be built outside the fake mode (torchtitan builds its mesh first, too)."""
    from clipav2.parallel.fsdp import FSDPEngine

    made = FSDPEngine._mesh
    FSDPEngine._mesh = _outside_fake(made)
    try:
        yield
    finally:
        FSDPEngine._mesh = made


def _create_optimizer_state(module, optimizer) -> None:
    """One update from zero gradients, so the tracked step holds the optimizer state a step after
    the first does (cheaper than a whole first step)."""
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _make_tracker(engine, optimizer):
    if engine.name == "fsdp":
        from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

        tracker = _segment_tracker(FSDPMemTracker)(engine.module, optimizer)
    else:
        from torch.distributed._tools.mem_tracker import MemTracker

        tracker = _segment_tracker(MemTracker)()
        tracker.track_external(engine.module, optimizer)
    return tracker


PROBES = ((2, 2), (3, 2), (2, 3))  # (image, text) blocks: two at least, so that FSDP2's prefetch window is full


def extrapolate(runs: list[dict], depths: tuple[int, int]) -> dict:
    """Each segment's categories at `depths` from the three PROBES runs (linear per tower), then
    the largest segment."""
    base, more_image, more_text = runs
    out = {}
    for key, snap in base["segments"].items():
        if key not in more_image["segments"] or key not in more_text["segments"]:
            continue
        dv, dt = depths[0] - PROBES[0][0], depths[1] - PROBES[0][1]
        out[key] = {c: snap[c] + dv * (more_image["segments"][key][c] - snap[c]) + dt * (more_text["segments"][key][c] - snap[c])
                    for c in (*CATEGORIES, "total")}
    return {"segments": out, "peak": max(out.values(), key=lambda s: s["total"])}


def estimate(cfg, index: int, world_size: int, micro_batch: int, full_depth: bool = False) -> dict:
    """The tracked per-rank peak of stage `index`: the full model, or the reduced ones extrapolated."""
    from clipav2.stage import resolve

    if full_depth:
        return track_step(cfg, index, world_size, micro_batch)
    arch = resolve(cfg, index).arch
    return extrapolate([track_step(cfg, index, world_size, micro_batch, d) for d in PROBES],
                       (arch.vision.depth, arch.text.depth))


def compare(cfg, index: int, world_size: int, device_bytes: int, full_depth: bool = False, tracked=None) -> dict:
    """Stage `index` on `world_size` cards of `device_bytes`: the micro-batch `auto` chooses, the
    analytic model's peak there and the tracker's, per rank. `tracked`: a dict caching the
    tracker's results by (stage, micro-batch) over calls."""
    from clipav2 import micro_batch
    from clipav2.stage import resolve

    precision = "bf16_autocast" if cfg.parallel.precision == "auto" else cfg.parallel.precision
    stage = resolve(cfg, index, world_size)
    fit = micro_batch.choose(cfg, stage, world_size, device_bytes, precision)
    model = micro_batch.step_bytes(cfg, stage, world_size, fit["micro_batch"], precision)
    tracked = {} if tracked is None else tracked
    key = (index, fit["micro_batch"])
    if key not in tracked:
        tracked[key] = estimate(cfg, index, world_size, fit["micro_batch"], full_depth)
    peak = tracked[key]["peak"]
    return {"stage": cfg.stages[index].name, "micro_batch": fit["micro_batch"], "micro_steps": fit["micro_steps"],
            "analytic_bytes": model["total"], "analytic_at": model["at"], "tracked": peak,
            "tracked_at": next(k for k, v in tracked[key]["segments"].items() if v is peak),
            "device_bytes": device_bytes}


def render(rows: list[dict], card: str, gpus: int, strategy: str, full_depth: bool, seconds: float) -> str:
    """The `clipav2 plan --memory` table: GiB per rank at the tracked peak, by category."""
    head = f"{'stage':<13}{'micro-batch':>13}{'analytic':>10}{'tracked':>9}{'ratio':>7}  " + "".join(f"{c:>13}" for c in CATEGORIES)
    lines = [f"per-rank peak GiB of one step on {gpus} x {card} ({strategy}), at the micro-batch `auto` picks", head]
    for r in rows:
        t = r["tracked"]
        micro = f"{r['micro_batch']} x {r['micro_steps']}"
        lines.append(f"{r['stage']:<13}{micro:>13}{r['analytic_bytes'] / GIB:>10.2f}{t['total'] / GIB:>9.2f}"
                     f"{r['analytic_bytes'] / t['total']:>7.3f}  " + "".join(f"{t[c] / GIB:>13.2f}" for c in CATEGORIES))
        lines.append(f"{'':<13}peak: analytic at the {r['analytic_at']}, tracked in the {r['tracked_at']}")
    how = "the whole model" if full_depth else f"{' '.join(f'{v}+{t}' for v, t in PROBES)} blocks extrapolated per block"
    lines.append(f"tracked: torch's {'FSDPMemTracker' if strategy == 'fsdp' else 'MemTracker'} over one step on fake CPU "
                 f"tensors under bf16 autocast ({how}; {seconds:.0f} s)")
    return "\n".join(lines)
