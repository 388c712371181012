"""`clipav2 data shards|demo|inspect|benchmark`: build webdataset shards from a user's data, write the
generated demo data set, check shards through a stage's training pipeline, and lay labelled shards
out for LAION's CLIP_benchmark (docs/eval.md)."""
import json
import os
import sys

from clipav2 import exitcodes


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("shards", help="build shards from images + captions (CSV/TSV/JSONL, sidecar .txt, "
                                      "img2dataset parquet) or re-shard existing shards")
    p.add_argument("src", help="a captions table, a folder, a parquet file, or a shard pattern")
    p.add_argument("out", help="an empty output directory")
    p.add_argument("--resize", type=int, metavar="PX", help="shrink the short side to PX (JPEG re-encode)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when resizing (default 90)")
    p.add_argument("--shard-size", type=int, default=10000, help="records per shard (default 10000)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for resizing")

    p = sub.add_parser("demo", help="write the synthetic captioned demo data set (train + labelled eval)")
    p.add_argument("out", help="an empty output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=int, default=20000, help="training scenes (default 20000)")
    p.add_argument("--eval", type=int, default=1200, help="held-out labelled scenes (default 1200)")
    p.add_argument("--image-size", type=int, default=64)

    p = sub.add_parser("benchmark", help="link labelled shards into CLIP_benchmark's wds/ layout, with the "
                                         "class names and {c} templates of eval.protocol=open_clip")
    p.add_argument("shards", help="labelled shards: a directory, pattern or list")
    p.add_argument("out", help="the --dataset_root to give clip_benchmark (an empty or new directory)")
    p.add_argument("--classnames", default="imagenet", help="imagenet, demo, or a file (as data.eval_classnames)")
    p.add_argument("--templates", default="imagenet", help="imagenet, demo, or a file (as data.eval_templates)")

    p = sub.add_parser("inspect", help="decode every record through a stage's training pipeline")
    p.add_argument("shards", help="a shard pattern, list or directory")
    p.add_argument("--config", help="a recipe YAML (default: a 224 px stage with the standard augmentation)")
    p.add_argument("--stage", help="the stage of --config (default: its first)")
    p.add_argument("--vocab", help="WordPiece vocabulary to tokenize captions with")
    p.add_argument("--examples", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print one JSON object {samples, skipped, ...}")


def main(args) -> int:
    try:
        return {"shards": _shards, "demo": _demo, "inspect": _inspect, "benchmark": _benchmark}[args.action](args)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"clipav2 data {args.action}: {e}", file=sys.stderr)
        return exitcodes.CONFIG


def _shards(args) -> int:
    from clipav2.data.make import make_shards

    manifest = make_shards(args.src, args.out, args.resize, args.quality, args.shard_size, args.workers)
    print(f"{manifest['samples']} samples in {len(manifest['shards'])} shards under {args.out}; "
          f"skipped: {manifest['skipped'] or 'none'}")
    return exitcodes.OK


def _demo(args) -> int:
    from clipav2.data.demo import write_demo

    manifests = write_demo(args.out, args.seed, args.train, args.eval, args.image_size)
    for split, m in manifests.items():
        print(f"{split}: {m['samples']} samples in {len(m['shards'])} shards under {os.path.join(args.out, split)}")
    return exitcodes.OK


def _benchmark(args) -> int:
    from clipav2.eval.benchmark_set import write_clip_benchmark_set

    n = write_clip_benchmark_set(args.shards, args.out, args.classnames, args.templates)
    print(f"{n} shards linked under {args.out}; evaluate with: clip_benchmark eval --model_type open_clip "
          f"--model local-dir:FOLDER --dataset wds/NAME --dataset_root {args.out} --no_amp")
    return exitcodes.OK


def _stage_and_text(args):
    from clipav2.config import ConfigError, StageConfig, load_config

    vocab, seed = args.vocab, 0
    if args.config:
        try:
            cfg = load_config(args.config)
            stage = cfg.stage(args.stage) if args.stage else cfg.stages[0]
        except ConfigError as e:
            raise ValueError(str(e)) from None
        vocab, seed, fast = vocab or cfg.data.vocab, cfg.seed, cfg.data.fast_decode
    else:
        stage, fast = StageConfig(), True
    text, note = None, None
    if args.config or vocab or os.environ.get("CLIPAV2_VOCAB"):
        try:
            from clipav2.text import make_text_transform

            text = make_text_transform(stage, vocab, seed)
        except Exception as e:  # noqa: BLE001 - inspect still checks images and captions
            note = f"captions not tokenized: {str(e).splitlines()[0]}"
    else:
        note = "captions not tokenized (give --config, --vocab or CLIPAV2_VOCAB to tokenize)"
    return stage, fast, text, note


def _inspect(args) -> int:
    from clipav2.data.scan import scan
    from clipav2.data.transforms import TrainTransform

    stage, fast, text, note = _stage_and_text(args)
    report = scan(args.shards, TrainTransform.from_stage(stage, fast), text, args.examples)
    report["stage"] = {"name": stage.name, "image_size": stage.image_size, "text_len": stage.text_len,
                       "text_reduction": stage.text_reduction}
    if note:
        report["note"] = note
    if args.json:
        print(json.dumps(report))
    else:
        skipped = ", ".join(f"{k} {v}" for k, v in report["skipped"].items()) or "none"
        print(f"{report['samples']} good samples in {report['shards']} shards "
              f"(stage {stage.name}: {stage.image_size} px, text {stage.text_len} {stage.text_reduction})")
        print(f"skipped: {sum(report['skipped'].values())} ({skipped})")
        for ex in report["examples"]:
            ids = f"  ids {ex['text_ids']}" if "text_ids" in ex else ""
            print(f"  {ex['key']}: {ex['image']} {ex['image_dtype']} {ex['pixel_range']}  {ex['caption']!r}{ids}")
        if note:
            print(f"note: {note}")
    return exitcodes.OK if report["samples"] else exitcodes.CONFIG
