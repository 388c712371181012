"""The WordPiece tokenizer: ids against the reference BertWordPieceTokenizer, the clipa and
open_clip packings, bad input, vocabulary lookup order and its error, pickling."""
import os
import pickle
import random
import shutil
import string

import pytest
import torch
from tokenizers import BertWordPieceTokenizer

from clipav2.text import Tokenizer, find_vocab, tokenize
from clipav2.text.captions import generate_captions
from clipav2.text.vocab import VocabNotFound

VOCAB = os.environ.get("CLIPAV2_VOCAB")
assert VOCAB and os.path.isfile(VOCAB), "set CLIPAV2_VOCAB to bert-base-uncased's vocab.txt (see .ci/run)"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(VOCAB)


@pytest.fixture(scope="module")
def reference():
    return BertWordPieceTokenizer(VOCAB, lowercase=True)


def test_known_ids_and_clipa_packing(tok):
    # bert-base-uncased: [CLS]=101, a=1037, photo=6302, of=1997, dog=3899; no [SEP] (102), pad 0
    assert tok("a photo of a dog", 8).tolist() == [[101, 1037, 6302, 1997, 1037, 3899, 0, 0]]
    assert tok("A Photo of a DOG", 4).tolist() == [[101, 1037, 6302, 1997]]  # L-1 pieces


def _printable_noise(rng, n):
    return "".join(rng.choice(string.printable[:-5]) for _ in range(n))  # no \t\n\r\x0b\x0c


def test_pieces_match_the_reference_wordpiece(tok, reference):
    rng = random.Random(0)
    texts = generate_captions(300, seed=3) + [_printable_noise(rng, rng.randint(1, 80)) for _ in range(300)]
    for text in texts:  # printable ASCII takes a faster path; it must equal the reference
        assert tok.encode(text) == reference.encode(text, add_special_tokens=False).ids, text
    # beyond ASCII, open_clip mode normalises as Hugging Face does (clipa mode as tensorflow_text
    # does: tests/test_text_syntax_clipa.py)
    oc = Tokenizer(VOCAB, mode="open_clip")
    for text in texts + ["Café naïve résumé", "東京タワー at night", "tab\tand\nnewline", "ÀÉÎÕÜ straße", "x\u200by"]:
        assert oc.encode(text) == reference.encode(text, add_special_tokens=False).ids, text


@pytest.mark.parametrize("length", [4, 8, 32])
def test_open_clip_mode_matches_its_hf_path(length, reference):
    # open_clip: HF tokenizer truncated to L with [CLS] ... [SEP], then [SEP] replaced by 0
    oc = Tokenizer(VOCAB, mode="open_clip")
    reference.enable_truncation(length)
    for text in generate_captions(50, seed=4) + ["dog", ""]:
        ids = [0 if i == 102 else i for i in reference.encode(text).ids]
        assert oc(text, length)[0].tolist() == ids + [0] * (length - len(ids))
    reference.no_truncation()


@pytest.mark.parametrize(
    "caption",
    ["", "   \t\n ", b"\xff\xfe\xfa broken \xc3", "x" * 100_000, "word " * 20_000, "🐶🐱 🚗💨 dog",
     "собака бежит по снегу", "一只狗在雪地里奔跑", "كلب يجري", "a\udcffb lone surrogate", "[CLS] [PAD] [SEP]"],
    ids=["empty", "whitespace", "non-utf8-bytes", "100kB-word", "100kB-words", "emoji", "cyrillic", "chinese",
         "arabic", "surrogate", "special-text"],
)
def test_bad_input_tokenizes(tok, caption):
    row = tok.pack(tok.encode(caption), 16)
    assert row.shape == (16,) and row.dtype == torch.long and row[0] == 101
    filled = (row != 0).tolist()
    assert filled == sorted(filled, reverse=True), "padding only at the end"
    assert 101 not in row[1:].tolist() and 102 not in row.tolist(), "caption text cannot inject special ids"
    if not str(caption).strip():
        assert row.tolist() == [101] + [0] * 15


def test_non_text_caption_is_a_clear_error(tok):
    with pytest.raises(TypeError, match="caption: expected str or bytes, got int"):
        tok.encode(3)


def test_tokenize_batches_and_truncates():
    out = tokenize(["a photo of a dog", "a cat", ""], 5)
    assert out.tolist() == [[101, 1037, 6302, 1997, 1037], [101, 1037, 4937, 0, 0], [101, 0, 0, 0, 0]]
    assert tokenize("a cat", 3, mode="open_clip").tolist() == [[101, 1037, 0]]


def test_pickles_small_and_identical(tok):
    blob = pickle.dumps(tok)
    assert len(blob) < 4096, "a data-loader worker receives a path, not the vocabulary"
    clone = pickle.loads(blob)
    text = "A small dog running on the beach, ÉTÉ 2019 🐶"
    assert clone.encode(text) == tok.encode(text) and clone.id_to_piece([3899]) == ["dog"]


def test_bad_mode_and_bad_vocabulary_are_named(tmp_path):
    with pytest.raises(ValueError, match="mode: 'gpt'"):
        Tokenizer(VOCAB, mode="gpt")
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\nhello\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: has no \[CLS\]"):
        Tokenizer(bad)
    with pytest.raises(ValueError, match="text_len: 1"):
        Tokenizer(VOCAB).budget(1)


# ---------------------------------------------------------------- where the vocabulary comes from


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a hub endpoint nobody listens on."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    return tmp_path / "hub"


def test_lookup_order_explicit_then_env(monkeypatch, tmp_path, no_hub):
    other = tmp_path / "other.txt"
    shutil.copy(VOCAB, other)
    monkeypatch.setenv("CLIPAV2_VOCAB", VOCAB)
    assert find_vocab(other) == other
    assert str(find_vocab()) == VOCAB
    assert str(find_vocab(tmp_path / "missing.txt")) == VOCAB, "a missing explicit path falls through"


def test_lookup_from_the_hugging_face_cache(monkeypatch, no_hub):
    monkeypatch.delenv("CLIPAV2_VOCAB")
    snapshot = no_hub / "models--bert-base-uncased" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(VOCAB, snapshot / "vocab.txt")
    (no_hub / "models--bert-base-uncased" / "refs").mkdir()
    (no_hub / "models--bert-base-uncased" / "refs" / "main").write_text("0" * 40)
    assert find_vocab() == snapshot / "vocab.txt"


def test_nothing_found_lists_all_three_ways_offline(monkeypatch, tmp_path, no_hub):
    monkeypatch.delenv("CLIPAV2_VOCAB")
    with pytest.raises(VocabNotFound) as err:
        Tokenizer(tmp_path / "nope.txt")
    msg = str(err.value)
    assert "nope.txt" in msg and "CLIPAV2_VOCAB: not set" in msg and "unreachable" in msg
    assert "data.vocab" in msg and "bert-base-uncased" in msg
