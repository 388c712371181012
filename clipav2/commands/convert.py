"""`clipav2 convert --from open_clip IN OUT.safetensors [--model NAME]`: an open_clip checkpoint
(a file, or a model folder as on the Hugging Face Hub) to our layout.
`clipav2 convert --to open_clip IN OUT [--model NAME]`: ours to open_clip's layout; OUT is a
.safetensors file, or a folder (a name without suffix): an open_clip model folder (`open_clip_config.json` with the model and
preprocessing config beside `open_clip_model.safetensors`) that
`open_clip.create_model_and_transforms("local-dir:OUT")` loads as trained, with the WordPiece
tokenizer's files (`open_clip.get_tokenizer("local-dir:OUT")` works offline; the vocabulary from
--vocab, else the recipe's data.vocab, else CLIPAV2_VOCAB, else the Hugging Face cache).
`clipav2 convert --to clipav2 STEP_DIR OUT.safetensors`: a resumable checkpoint to our weights file.

IN may be RUN_DIR/<stage>.safetensors or a checkpoint of a stage still training,
RUN_DIR/checkpoints/<stage>/step_N (any strategy; its architecture from RUN_DIR/config.yaml or
--config). `--model` is needed only when IN does not name its architecture (a plain open_clip file)."""
import sys
from pathlib import Path

from clipav2 import exitcodes


def add_arguments(parser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=["open_clip"], help="convert an open_clip checkpoint to ours")
    way.add_argument("--to", dest="target", choices=["open_clip", "clipav2"],
                     help="open_clip: ours to open_clip's layout; clipav2: a checkpoint step directory to our file")
    parser.add_argument("input", help="checkpoint to read (.safetensors, .bin, .pt, an open_clip folder, a step directory)")
    parser.add_argument("output", help="file to write (.safetensors), or with --to open_clip a folder")
    parser.add_argument("--model", help="architecture name, e.g. ViT-H-14-CLIPA (default: from the file's metadata)")
    parser.add_argument("--config", help="the recipe of a step directory (default: RUN_DIR/config.yaml)")
    parser.add_argument("--vocab", help="WordPiece vocabulary for an open_clip folder's tokenizer "
                                        "(default: the recipe's data.vocab, else CLIPAV2_VOCAB, else the hub cache)")


def _read(args):
    """(model, eval transform of its stage or None, provenance) for the input."""
    from clipav2.config import load_config
    from clipav2.models.convert import from_open_clip, load_model
    from clipav2.models.openclip_folder import read_folder
    from clipav2.train.consolidate import find_step_dir, load_step_model

    step_dir = find_step_dir(args.input)
    if step_dir is not None:
        if args.source:
            raise ValueError(f"{args.input} is a clipav2 training checkpoint, not an open_clip one; use --to")
        model, stage, step = load_step_model(step_dir, load_config(args.config) if args.config else None)
        _check_name(args.model, model.arch.name, args.input)
        return model, stage.eval_transform, dict(stage=stage.name, step=step)
    if args.target == "clipav2":
        raise ValueError(f"--to clipav2 reads a checkpoint step directory (RUN_DIR/checkpoints/<stage>/step_N), not {args.input}")
    if args.source:
        path, numerics = (read_folder(args.input) if Path(args.input).is_dir() else (args.input, {}))
        named = _named(path)
        name = args.model or named
        if name is None:
            raise ValueError(f"{path} does not name its architecture; give --model (e.g. ViT-H-14-CLIPA)")
        _check_name(args.model, named or name, path)
        return (load_model(path) if named else from_open_clip(path, name, **numerics)), None, {}
    model = load_model(args.input, name=args.model)
    return model, None, {}


def _vocab(args):
    """The WordPiece vocabulary file the model was trained with, as the trainer finds it."""
    from clipav2.config import load_config
    from clipav2.text.vocab import find_vocab
    from clipav2.train.consolidate import find_step_dir

    recipe = args.config
    if recipe is None:
        step_dir = find_step_dir(args.input)
        run_dir = step_dir.parents[2] if step_dir is not None else Path(args.input).parent
        recipe = run_dir / "config.yaml" if (run_dir / "config.yaml").is_file() else None
    return find_vocab(args.vocab or (load_config(recipe).data.vocab if recipe else None))


def _named(path):
    from clipav2.models.convert import read_metadata

    return read_metadata(path).get("arch") if str(path).endswith(".safetensors") else None


def _check_name(asked, found, path):
    if asked is not None and asked != found:
        raise ValueError(f"{path} holds a {found!r} model, not {asked!r}")


def main(args) -> int:
    from clipav2.models.arch import ARCHITECTURES
    from clipav2.models.convert import save_model, save_open_clip
    from clipav2.models.openclip_folder import wordpiece, write_folder

    if args.model is not None and args.model not in ARCHITECTURES:
        print(f"clipav2 convert: unknown architecture {args.model!r}; known: {', '.join(ARCHITECTURES)}", file=sys.stderr)
        return exitcodes.CONFIG
    folder = args.target == "open_clip" and (Path(args.output).suffix == "" or Path(args.output).is_dir())
    if not folder and not args.output.endswith(".safetensors"):
        print(f"clipav2 convert: output must be a .safetensors file{' or a folder' if args.target == 'open_clip' else ''}, "
              f"got {args.output}", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        model, eval_transform, meta = _read(args)
        origin = f"{'open_clip' if args.source else 'clipav2'}:{args.input}"
        if folder:
            vocab = _vocab(args) if wordpiece(model.arch) else None
            write_folder(model, args.output, eval_transform or "resize", vocab=vocab, converted_from=origin, **meta)
        elif args.target == "open_clip":
            save_open_clip(model, args.output, converted_from=origin, **meta)
        else:
            save_model(model, args.output, converted_from=origin, **meta)
    except (OSError, ValueError, KeyError) as e:
        print(f"clipav2 convert: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    a = model.arch
    print(f"wrote {args.output}{' (an open_clip model folder)' if folder else ''}: {a.name} at "
          f"{a.vision.image_size} px, context {a.text.context_length}, pos_embed={a.vision.pos_embed}, "
          f"gelu={a.gelu}, ln_eps={a.ln_eps}")
    return exitcodes.OK
