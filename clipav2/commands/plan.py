"""`clipav2 plan CONFIG [key=value ...] [--json | --resolved] [--gpu h100 --gpus 64 (--mfu 0.45 | --samples-per-s X) --price P]`
`clipav2 plan CONFIG --memory [--gpu h100 --gpus 8] [--full-depth] [--json]`

Per stage: image size, kept image tokens, text length, samples, global batch, steps, warmup, peak
LR and training FLOPs; with an accelerator, GPU-hours, wall time and dollars against the budget.
A cost input no flag or recipe key gave (MFU, GPU count, price) is listed under the table as
assumed; without an accelerator a line says why the cost is left out.
`--memory`: per stage, the micro-batch `micro_batch: auto` would pick on that card and the per-rank
peak of one step there, from the analytic model and from torch's memory tracker run over the real
engine and step on fake tensors (clipav2.train.memory_estimate; docs/performance.md).
"""
import json
import sys

from clipav2 import exitcodes
from clipav2.config import ConfigError, load_config
from clipav2.cost.paper import PAPER_MFU


def add_arguments(parser):
    parser.add_argument("config", help="recipe YAML, e.g. configs/h14.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stages.pretrain.samples=4096")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--resolved", action="store_true",
                        help="print the recipe flattened (base, stage_defaults and overrides applied) as YAML, as RUN_DIR/config.yaml holds it")
    parser.add_argument("--gpu", help="accelerator to cost on (a100-40gb, a100-80gb, h100, h200, tpu-v3); default cost.gpu of the recipe")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs in the job (default 8, printed as assumed)")
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument("--mfu", type=float,
                      help="model FLOPs utilisation to assume (default 0.265, the A100 MFU the CLIPA-v2 paper's H/14 hours imply; printed as assumed)")
    rate.add_argument("--samples-per-s", type=float, dest="samples_per_s",
                      help="measured samples/s PER GPU on the first stage (e.g. from clipav2 bench); later stages scale by FLOPs")
    parser.add_argument("--price", help="USD per GPU-hour (default: the price table, or cost.price_per_gpu_hour)")
    parser.add_argument("--memory", action="store_true",
                        help="per-rank memory of each stage: the analytic model beside torch's tracker (runs one step per stage on fake tensors)")
    parser.add_argument("--full-depth", action="store_true", dest="full_depth",
                        help="with --memory: track the whole model (minutes) instead of two or three blocks per tower extrapolated")


def _hardware(args, cfg):
    """The hardware to cost on; None when nothing asks for cost; a note (str) when the recipe's
    accelerator cannot be costed without a measured rate."""
    from clipav2.cost.plan import Hardware
    from clipav2.accelerators import get_accelerator, parse_price

    gpu = args.gpu or (cfg.cost.gpu if cfg.cost.gpu != "auto" else None)
    flags = any(v is not None for v in (args.gpu, args.gpus, args.mfu, args.samples_per_s, args.price))
    if not (gpu or flags):
        return ("cost left out: the recipe's cost.gpu is auto (the accelerator the run finds); "
                "give --gpu to cost it, e.g. --gpu a100-80gb --gpus 64")
    if gpu is None:
        raise ValueError("--gpu: name the accelerator to cost on (a100-40gb, a100-80gb, h100, h200, tpu-v3)")
    accel = get_accelerator(gpu)
    if not flags and not accel.peak_flops:  # only the recipe's cost.gpu, and no MFU can time it
        return f"cost left out: {accel.name} has no peak FLOP/s to apply an MFU to; give --samples-per-s (e.g. from clipav2 bench)"
    price = args.price if args.price is not None else cfg.cost.price_per_gpu_hour
    price = accel.price_per_hour if price is None else parse_price(price)
    mfu = args.mfu if args.mfu is not None or args.samples_per_s is not None else PAPER_MFU
    return Hardware(accel, 8 if args.gpus is None else args.gpus, price, mfu, args.samples_per_s)


def _assumed(args, cfg) -> list[str]:
    """The cost inputs that no flag and no recipe key gave: printed, so a default is never read as
    a measurement."""
    out = []
    if args.mfu is None and args.samples_per_s is None:
        out.append(f"MFU {PAPER_MFU:.1%}, the A100 figure the CLIPA-v2 paper's 8,640 H/14 hours imply "
                   "(--mfu, or --samples-per-s from clipav2 bench)")
    if args.gpus is None:
        out.append("8 GPUs (--gpus)")
    if args.price is None and cfg.cost.price_per_gpu_hour is None:
        out.append("the price table's $/GPU-hour (--price)")
    return out


def _text(doc) -> str:
    has_cost = "total_cost_usd" in doc
    head = f"{'stage':<14}{'px':>5}{'tokens':>8}{'text':>6}{'samples':>16}{'batch':>8}{'steps':>9}{'warmup':>8}{'peak LR':>10}{'train FLOPs':>13}"
    if has_cost:
        head += f"{'GPU-h':>11}{'wall d':>8}{'USD':>12}"
    lines = [f"plan for {doc['model']}", head]
    for s in doc["stages"]:
        line = (f"{s['name']:<14}{s['image_size']:>5}{s['kept_image_tokens']:>8}{s['text_len']:>6}{s['samples']:>16,}"
                f"{s['global_batch']:>8,}{s['steps']:>9,}{s['warmup_steps']:>8,}{s['peak_lr']:>10.4g}{s['train_flops']:>13.3e}")
        if has_cost:
            line += f"{s['gpu_hours']:>11,.0f}{s['wall_hours'] / 24:>8.1f}{s['cost_usd']:>12,.0f}"
        lines.append(line)
    total = f"{'total':<14}{'':>85}{doc['total_train_flops']:>13.3e}"
    if has_cost:
        total += f"{doc['total_gpu_hours']:>11,.0f}{doc['total_wall_hours'] / 24:>8.1f}{doc['total_cost_usd']:>12,.0f}"
    lines.append(total)
    lo, hi = (f(s["checkpointing_factor"] for s in doc["stages"]) for f in (min, max))
    if hi > 1:  # recomputation: what the GPUs execute beyond the train FLOPs
        span = f"{lo:.3f}" if f"{lo:.3f}" == f"{hi:.3f}" else f"{lo:.3f} to {hi:.3f}"
        lines.append(f"checkpointing {doc['checkpointing']}: the GPUs execute {span}x the train FLOPs (each checkpointed "
                     f"block recomputes its forward up to fc2's input); MFU counts train FLOPs only")
    if has_cost:
        mfu = f"MFU {doc['mfu']:.1%}" if doc.get("mfu") is not None else "measured samples/s"
        lines.append(f"on {doc['gpus']} x {doc['gpu']} at ${doc['price_per_gpu_hour']:.3f}/GPU-hour, {mfu}")
        lines += [f"assumed: {a}" for a in doc.get("assumed", [])]
    budget = doc.get("budget_usd")
    if budget is not None:
        verdict = ""
        if has_cost:
            verdict = "within" if doc["total_cost_usd"] <= budget else "OVER"
            verdict = f": {verdict} budget ({doc['total_cost_usd'] / budget:.0%})"
        lines.append(f"budget ${budget:,.0f}{verdict}")
    return "\n".join(lines)


def _print_resolved(args) -> int:
    from clipav2.config import to_yaml

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"clipav2 plan: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    print(to_yaml(cfg), end="")
    return exitcodes.OK


def _memory(args) -> int:
    import time

    from clipav2.train import memory_estimate as me

    try:
        cfg = load_config(args.config, args.overrides)
        gpu = args.gpu or (cfg.cost.gpu if cfg.cost.gpu != "auto" else "h100")
        from clipav2.accelerators import ACCELERATORS, get_accelerator

        card = get_accelerator(gpu)
        if card.memory_bytes is None:
            known = [a.name for a in ACCELERATORS.values() if a.memory_bytes is not None]
            raise ValueError(f"--gpu: no memory size known for {card.name}; one of {', '.join(known)}")
        gpus = 8 if args.gpus is None else args.gpus
        if gpus < 1:
            raise ValueError(f"--gpus: {gpus} must be >= 1")
        if cfg.parallel.strategy == "deepspeed":
            raise ValueError("--memory: the tracker follows single, ddp and fsdp; DeepSpeed owns its memory (set parallel.strategy)")
        cfg.validate(gpus)
    except (ConfigError, ValueError) as e:
        print(f"clipav2 plan: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    from clipav2.train.metrics import quiet_library_warnings

    quiet_library_warnings()  # the loss's autograd all_gather is deprecated: nothing to act on here
    rows, cache, t = [], {}, time.perf_counter()
    for index in range(len(cfg.stages)):
        rows.append(me.compare(cfg, index, gpus, card.memory_bytes, args.full_depth, tracked=cache))
    seconds = time.perf_counter() - t
    if args.json:
        print(json.dumps({"gpu": card.name, "gpus": gpus, "full_depth": args.full_depth, "seconds": seconds, "stages": rows}, indent=1))
        return exitcodes.OK
    print(me.render(rows, card.name, gpus, cfg.parallel.strategy, args.full_depth, seconds))
    return exitcodes.OK


def main(args) -> int:
    if args.memory:
        return _memory(args)
    if args.resolved:
        return _print_resolved(args)
    from clipav2.cost.plan import plan
    from clipav2.accelerators import PriceError

    try:
        cfg = load_config(args.config, args.overrides)
        hardware = _hardware(args, cfg)
        note = hardware if isinstance(hardware, str) else None
        doc = plan(cfg, None if note else hardware)
    except (ConfigError, PriceError, ValueError) as e:
        print(f"clipav2 plan: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    if note:
        doc["cost_note"] = note
    elif "total_cost_usd" in doc:
        doc["assumed"] = _assumed(args, cfg)
    print(json.dumps(doc, indent=1) if args.json else _text(doc) + (f"\n{note}" if note else ""))
    return exitcodes.OK
