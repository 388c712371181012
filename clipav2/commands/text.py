"""`clipav2 text preview --reduction NAME|all --length L [--seed S] [--json] CAPTION...`: what a
stage's text transform keeps of each caption (the word pieces after [CLS], in order); `all` shows
every reduction, one line each. Caption i is drawn with sample key "i", so --seed and the order
reproduce a preview exactly."""
import json
import sys

from clipav2 import exitcodes
from clipav2.config import StageConfig
from clipav2.reduce.text import REDUCTIONS as TEXT_REDUCTIONS, supported
from clipav2.text import TOKENIZER_MODES


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    preview = sub.add_parser("preview", help="show the word pieces a text reduction keeps")
    preview.add_argument("--reduction", required=True, choices=(*TEXT_REDUCTIONS, "all"))
    preview.add_argument("--length", type=int, required=True, help="text length L, [CLS] included")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--mode", choices=TOKENIZER_MODES, default="clipa", help="clipa: L-1 pieces; open_clip: L-2")
    preview.add_argument("--vocab", help="WordPiece vocabulary file (else CLIPAV2_VOCAB, else bert-base-uncased from the hub)")
    preview.add_argument("--json", action="store_true", help="a JSON list of {caption, pieces, ids}")
    preview.add_argument("captions", nargs="+", metavar="CAPTION")


def main(args) -> int:
    from clipav2.text import make_text_transform
    from clipav2.text.syntax import NltkDataMissing
    from clipav2.text.vocab import VocabNotFound

    if args.length < 2:
        print(f"clipav2 text preview: --length {args.length} must be >= 2 ([CLS] plus one piece)", file=sys.stderr)
        return exitcodes.CONFIG
    names = supported(args.mode) if args.reduction == "all" else (args.reduction,)
    try:
        transforms = {name: make_text_transform(StageConfig(name="preview", text_len=args.length, text_reduction=name,
                                                            tokenizer_mode=args.mode), vocab=args.vocab, seed=args.seed)
                      for name in names}
    except (ImportError, ValueError, VocabNotFound, NltkDataMissing) as e:
        print(f"clipav2 text preview: {e}", file=sys.stderr)
        return exitcodes.CONFIG
    rows = []
    for i, caption in enumerate(args.captions):
        for name, transform in transforms.items():
            ids = transform.kept(caption, str(i))
            rows.append({"caption": caption, "reduction": name, "pieces": transform.tokenizer.id_to_piece(ids), "ids": ids})
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
    else:
        width = max(map(len, names)) if len(names) > 1 else 0
        for row in rows:
            label = f"{row['reduction']:<{width}}  " if width else ""
            print(label + " ".join(row["pieces"]))
    return exitcodes.OK
