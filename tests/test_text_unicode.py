"""The `clipa` tokenizer on every code point against tensorflow_text 2.11, the version CLIPA pins:
for each code point c, "x" + c + "y" must come out as tests/data/tf_text_sweep.txt says, which
tools/make_tf_text_tables.py wrote from tensorflow_text's BertTokenizer itself (its class per code
point: split, space, merge, mixed or unk; and a digest of the exact ids per block of 4096)."""
import importlib.util
import os
from pathlib import Path

import pytest

from clipav2.text import Tokenizer
from clipav2.text.vocab import file_sha256

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_tf_text_tables", ROOT / "tools" / "make_tf_text_tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)  # the table format has one home: the generator (TensorFlow not imported)


def read_sweep():
    classes, digests, vocab_hash = {}, {}, None
    for line in tables.SWEEP.read_text(encoding="ascii").splitlines():
        if line.startswith("#"):
            vocab_hash = vocab_hash or (line.split("sha256 ")[1].split(".")[0] if "sha256 " in line else None)
            continue
        kind, key, *value = line.split()
        if kind == "digest":
            digests[int(key, 16)] = value[0]
        else:
            first, _, last = key.partition("..")
            classes.update(dict.fromkeys(range(int(first, 16), int(last or first, 16) + 1), kind))
    return classes, digests, vocab_hash


def nested(ids, word_of):
    """Piece ids grouped by word, as tensorflow_text's ragged [words, pieces] output."""
    out = []
    for i, (piece, word) in enumerate(zip(ids, word_of)):
        if i and word == word_of[i - 1]:
            out[-1].append(piece)
        else:
            out.append([piece])
    return out


def test_every_code_point_as_tensorflow_text_2_11():
    classes, digests, vocab_hash = read_sweep()
    tok = Tokenizer(os.environ.get("CLIPAV2_VOCAB"))
    if tok.vocab_hash != vocab_hash:
        pytest.fail(f"the sweep was written for the vocabulary of sha256 {vocab_hash}, CLIPAV2_VOCAB has {tok.vocab_hash}")
    x, y, unk = (tok.entries.index(e) for e in ("x", "y", "[UNK]"))
    wrong, blocks = [], {}
    for c in tables.CODE_POINTS:
        words = nested(*tok.words(f"x{chr(c)}y"))
        got = tables.sweep_class(words, x, y, unk)
        if got != classes.get(c, "unk"):
            wrong.append(f"U+{c:04X} {got} (tensorflow_text: {classes.get(c, 'unk')})")
        blocks.setdefault(c // tables.BLOCK, []).append(words)
    print(f"{len(tables.CODE_POINTS)} code points, {len(wrong)} of another class")
    assert not wrong, f"{len(wrong)} code points split otherwise than tensorflow_text 2.11: " + ", ".join(wrong[:40])
    other_ids = [f"{b * tables.BLOCK:04X}..{(b + 1) * tables.BLOCK - 1:04X}" for b, outputs in sorted(blocks.items())
                 if tables.block_digest(outputs) != digests[b]]
    assert not other_ids, f"ids differ from tensorflow_text 2.11's in the blocks {', '.join(other_ids)}"
    assert len(blocks) == len(digests)


def test_the_sweep_holds_what_it_is_about():
    """The reference splits CJK Extension E and ICU-only punctuation, and leaves U+166D in the
    word (the `tokenizers` library does the opposite), so the sweep can tell."""
    classes, _, _ = read_sweep()
    assert [classes.get(c, "unk") for c in (0x2B820, 0x2B91F, 0x2E4C, 0x061D, 0x166D, 0x1FBF0)] == \
        ["split", "split", "split", "split", "unk", "unk"]
    assert classes[ord(",")] == "split" and classes[ord(" ")] == "space" and classes[ord("é")] == "merge"
