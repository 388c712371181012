"""`clipav2 convert --from open_clip IN OUT --model NAME` (an open_clip checkpoint to ours) and
`clipav2 convert --to open_clip IN OUT --model NAME` (ours to open_clip's layout). OUT is always
a .safetensors file carrying the architecture in its metadata."""
import sys

from clipav2 import exitcodes


def add_arguments(parser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=["open_clip"], help="convert an open_clip checkpoint to ours")
    way.add_argument("--to", dest="target", choices=["open_clip"], help="convert ours to open_clip's layout")
    parser.add_argument("input", help="checkpoint to read (.safetensors, .bin, .pt)")
    parser.add_argument("output", help="file to write (.safetensors)")
    parser.add_argument("--model", required=True, help="architecture name, e.g. ViT-H-14-CLIPA")


def main(args) -> int:
    from clipav2.models.arch import ARCHITECTURES
    from clipav2.models.convert import from_open_clip, load_model, save_model, save_open_clip

    if args.model not in ARCHITECTURES:
        print(f"clipav2 convert: unknown architecture {args.model!r}; known: {', '.join(ARCHITECTURES)}", file=sys.stderr)
        return exitcodes.CONFIG
    if not args.output.endswith(".safetensors"):
        print(f"clipav2 convert: output must be a .safetensors file, got {args.output}", file=sys.stderr)
        return exitcodes.CONFIG
    try:
        if args.source:
            model = from_open_clip(args.input, args.model)
            save_model(model, args.output, converted_from=f"open_clip:{args.input}")
        else:
            model = load_model(args.input, name=args.model)
            save_open_clip(model, args.output, converted_from=f"clipav2:{args.input}")
    except (OSError, ValueError, KeyError) as e:
        print(f"clipav2 convert: {e}", file=sys.stderr)
        return 1
    a = model.arch
    print(f"wrote {args.output}: {a.name} at {a.vision.image_size} px, context {a.text.context_length}, "
          f"pos_embed={a.vision.pos_embed}, gelu={a.gelu}, ln_eps={a.ln_eps}")
    return 0
