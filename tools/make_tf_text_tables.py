"""Writes the two tables that pin the `clipa` tokenizer to CLIPA's reference, tensorflow_text
2.11's `BertTokenizer(vocab, token_out_type=tf.int32, lower_case=True)` (clipa_jax/transforms/
bert_ops.py on CLIPA's t5x branch, whose requirements pin tensorflow-text 2.11.0):

  clipav2/text/tf_text_delimiters.txt   the code points its basic tokenizer makes words of their
      own: RE2's [!-/] [:-@] [\\[-`] [{-~] \\p{P} and Google BERT's CJK ranges (the keep-delimiter
      pattern of tensorflow_text's bert_tokenizer.py), read by clipav2.text.basic;
  clipav2/text/tf_text_unnormalized.txt  the code points its normalisation leaves as they are
      (its ICU 64 predates them) that the newest Unicode (the `unicodedata2` package) would fold,
      decompose, strip or blank, read by clipav2.text.basic;
  tests/data/tf_text_sweep.txt          for every code point c, what the whole tokenizer makes of
      "x" + c + "y": its class (split, space, merge, mixed; unk when unlisted) and a digest of
      the exact ids per block of 4096 code points, read by tests/test_text_unicode.py.

Only regenerating needs TensorFlow. tensorflow-text 2.11 has wheels for Python 3.7-3.10 only:

    python3.10 -m venv /tmp/tf211
    /tmp/tf211/bin/pip install tensorflow==2.11.* tensorflow-text==2.11.0 "numpy<1.24" unicodedata2
    /tmp/tf211/bin/python tools/make_tf_text_tables.py --vocab bert-base-uncased-vocab.txt
"""
import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
DELIMITERS = ROOT / "clipav2" / "text" / "tf_text_delimiters.txt"
UNNORMALIZED = ROOT / "clipav2" / "text" / "tf_text_unnormalized.txt"
SWEEP = ROOT / "tests" / "data" / "tf_text_sweep.txt"
CODE_POINTS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]  # every scalar value
BLOCK = 4096
CHUNK = 65536


def ranges(code_points):
    out = []
    for c in code_points:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return [f"{a:04X}..{b:04X}" if a != b else f"{a:04X}" for a, b in out]


def sweep_class(words, x, y, unk) -> str:
    """How "x" + c + "y" came out: c a word (or words) of its own, a word boundary that vanishes,
    inside one known word (vanished or mapped to letters), a mix (an expansion holding both), or
    inside one [UNK] word."""
    if words == [[unk]]:
        return "unk"
    if words == [[x], [y]]:
        return "space"
    if len(words) >= 3 and words[0] == [x] and words[-1] == [y]:
        return "split"
    return "merge" if len(words) == 1 else "mixed"


def block_digest(outputs) -> str:
    """16 hex digits of sha256 over the exact nested ids of a block's code points, in order."""
    return hashlib.sha256(json.dumps(outputs, separators=(",", ":")).encode()).hexdigest()[:16]


def reference_outputs(vocab: str):
    import tensorflow as tf
    import tensorflow_text

    tokenizer = tensorflow_text.BertTokenizer(vocab, token_out_type=tf.int32, lower_case=True)
    outputs = []
    for i in range(0, len(CODE_POINTS), CHUNK):
        chunk = CODE_POINTS[i : i + CHUNK]
        ragged = tokenizer.tokenize(tf.constant([f"x{chr(c)}y".encode() for c in chunk]))
        ids = ragged.flat_values.numpy().tolist()  # RaggedTensor.to_list() is per-row eager: hours
        rows, words = (s.numpy().tolist() for s in ragged.nested_row_splits)
        outputs += [[ids[words[w] : words[w + 1]] for w in range(rows[k], rows[k + 1])] for k in range(len(chunk))]
    return outputs


def reference_delimiters():
    import tensorflow as tf
    import tensorflow_text
    from tensorflow_text.python.ops import bert_tokenizer

    found = []
    for i in range(0, len(CODE_POINTS), CHUNK):
        chunk = CODE_POINTS[i : i + CHUNK]
        split = tensorflow_text.regex_split(tf.constant([f"x{chr(c)}y".encode() for c in chunk]),
                                            bert_tokenizer._DELIM_REGEX_PATTERN,
                                            bert_tokenizer._KEEP_DELIM_NO_WHITESPACE_PATTERN)
        counts = (split.row_splits[1:] - split.row_splits[:-1]).numpy()
        found += [c for c, n in zip(chunk, counts) if n == 3]
    return found


def reference_unchanged():
    """The code points that tensorflow_text's BertTokenizer normalisation (case_fold_utf8, NFD,
    \\p{Mn} removed, \\p{Cc}|\\p{Cf} made spaces) leaves as they are."""
    import tensorflow as tf
    from tensorflow_text.python.ops import bert_tokenizer

    basic = bert_tokenizer.BasicTokenizer(lower_case=True)
    found = []
    for i in range(0, len(CODE_POINTS), CHUNK):
        chunk = CODE_POINTS[i : i + CHUNK]
        texts = tf.constant([chr(c).encode() for c in chunk])
        out = tf.strings.regex_replace(basic.lower_case(texts), r"\p{Cc}|\p{Cf}", " ").numpy()
        found += [c for c, o in zip(chunk, out) if o == chr(c).encode()]
    return found


def newest_changes(c: int) -> bool:
    """Whether clipav2.text.basic's normalisation, under the newest Unicode, changes chr(c)."""
    import unicodedata2 as ud

    folded = ud.normalize("NFKC", ud.normalize("NFKC", chr(c)).casefold())
    out = "".join(" " if ud.category(d) in ("Cc", "Cf") else d
                  for d in ud.normalize("NFD", folded) if ud.category(d) != "Mn")
    return out != chr(c)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", required=True, help="bert-base-uncased vocab.txt")
    args = parser.parse_args()
    import tensorflow_text

    version = tensorflow_text.__version__
    if not version.startswith("2.11."):
        print(f"warning: tensorflow_text {version}; the reference is 2.11 (what CLIPA pins)", file=sys.stderr)
    vocab_hash = hashlib.sha256(Path(args.vocab).read_bytes()).hexdigest()
    entries = Path(args.vocab).read_text(encoding="utf-8").split("\n")
    x, y, unk = entries.index("x"), entries.index("y"), entries.index("[UNK]")

    delimiters = reference_delimiters()
    DELIMITERS.write_text(
        f"# The code points tensorflow_text {version}'s BERT basic tokenizer makes words of their own\n"
        "# (ASCII punctuation, RE2's \\p{P}, Google BERT's CJK ranges), after its normalisation.\n"
        "# Written by tools/make_tf_text_tables.py; do not edit.\n" + "\n".join(ranges(delimiters)) + "\n")

    import unicodedata2

    unnormalized = [c for c in reference_unchanged() if c > 0x7F and newest_changes(c)]
    UNNORMALIZED.write_text(
        f"# The code points tensorflow_text {version}'s BERT normalisation leaves as they are (its ICU\n"
        f"# predates them) that Unicode {unicodedata2.unidata_version} folds, decomposes, strips or makes a space.\n"
        "# Written by tools/make_tf_text_tables.py; do not edit.\n" + "\n".join(ranges(unnormalized)) + "\n")

    outputs = reference_outputs(args.vocab)
    by_class = {}
    for c, words in zip(CODE_POINTS, outputs):
        by_class.setdefault(sweep_class(words, x, y, unk), []).append(c)
    blocks = {}
    for c, words in zip(CODE_POINTS, outputs):
        blocks.setdefault(c // BLOCK, []).append(words)
    lines = [f"# What tensorflow_text {version}'s BertTokenizer(lower_case=True) makes of \"x\" + c + \"y\" for",
             f"# every code point c, with the bert-base-uncased vocabulary of sha256 {vocab_hash}.",
             "# Written by tools/make_tf_text_tables.py; do not edit. `CLASS first..last`: see its sweep_class;",
             "# code points not listed are unk. `digest BLOCK hex`: its block_digest of blocks of 4096."]
    for name in ("split", "space", "merge", "mixed"):
        lines += [f"{name} {r}" for r in ranges(by_class.get(name, []))]
    lines += [f"digest {b:03X} {block_digest(o)}" for b, o in sorted(blocks.items())]
    SWEEP.write_text("\n".join(lines) + "\n")
    counts = ", ".join(f"{k} {len(v)}" for k, v in sorted(by_class.items()))
    print(f"{DELIMITERS.name}: {len(delimiters)}; {UNNORMALIZED.name}: {len(unnormalized)}; {SWEEP.name}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
