"""Syntax priorities: the vocabulary table (tagged with nltk.pos_tag per entry, cached on disk by
the vocabulary's hash, English only), missing NLTK data, and `syntax_context` against open_clip's
syntax-mask tokenizer on words."""
import functools
import os
import shutil

import nltk
import pytest

from clipav2.reduce.text import syntax_pieces as keep_by_priority
from clipav2.text import Tokenizer, syntax
from clipav2.text.captions import generate_captions

VOCAB = os.environ.get("CLIPAV2_VOCAB")
assert VOCAB and os.environ.get("NLTK_DATA"), "set CLIPAV2_VOCAB and NLTK_DATA (see .ci/run)"


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPAV2_CACHE", str(tmp_path_factory.getbasetemp() / "clipav2-cache"))
        yield


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(VOCAB)


def test_table_is_pos_tag_of_each_entry_alone(tok):
    table = syntax.vocab_priorities(tok.entries, tok.vocab_hash)
    assert len(table) == tok.vocab_size
    assert [table[i] for i in (3899, 2417, 2770, 1996)] == [1, 2, 3, 4]  # dog red running the
    # the full rule against upstream's code is in test_text_syntax_clipa.py


def test_table_is_cached_by_vocabulary_hash(tok, tmp_path, monkeypatch):
    builds = []
    monkeypatch.setattr(syntax, "_tag_entries", lambda entries: builds.append(len(entries)) or bytes([4]) * len(entries))
    monkeypatch.setenv("CLIPAV2_CACHE", str(tmp_path))
    first = syntax.vocab_priorities(tok.entries, tok.vocab_hash)
    (cached,) = tmp_path.glob("syntax-*.bin")
    assert tok.vocab_hash[:32] in cached.name and cached.read_bytes() == first
    assert syntax.vocab_priorities(tok.entries, tok.vocab_hash) == first
    assert builds == [tok.vocab_size], "the second call reads the file"

    cached.write_bytes(b"\x09" * 10)  # a damaged file is rebuilt, not trusted
    assert syntax.vocab_priorities(tok.entries, tok.vocab_hash) == first and len(builds) == 2

    other = tmp_path / "vocab.txt"  # another vocabulary: another key
    shutil.copy(VOCAB, other)
    with open(other, "a", encoding="utf-8") as f:
        f.write("zzyzx\n")
    other_tok = Tokenizer(other)
    assert len(syntax.vocab_priorities(other_tok.entries, other_tok.vocab_hash)) == tok.vocab_size + 1
    assert len(list(tmp_path.glob("syntax-*.bin"))) == 2


def test_syntax_mask_is_english_only(tmp_path):
    words = ["собака", "кошка", "дом", "снег", "бежит", "красный", "белый", "город"] * 20
    with pytest.raises(ValueError, match="English-only.*truncate, random or block"):
        syntax.vocab_priorities(["[PAD]", "[UNK]", "[CLS]"] + words, "0" * 64, "ru-vocab.txt")


def test_missing_tagger_data_says_what_to_run(monkeypatch, tmp_path):
    downloads = []
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk, "download", lambda *a, **k: downloads.append(a) or False)
    monkeypatch.setattr(syntax, "reachable", lambda url: True)
    monkeypatch.setattr(syntax, "_download_tried", False)
    monkeypatch.setattr(syntax, "_tagger_found", False)
    for _ in range(2):
        with pytest.raises(syntax.NltkDataMissing, match="python -m nltk.downloader .*averaged_perceptron_tagger_eng"):
            syntax.ensure_tagger()
    assert downloads == [("averaged_perceptron_tagger_eng",)], "download is tried once, then not again"


# ---------------------------------------------------------------- syntax_context vs open_clip

TRICKY = [
    'A "vintage" red car parked outside the old church.',
    "Two dogs play in the snow. The owner watches them from a wooden bench!",
    "Levi's Men's 501 Original Fit Jeans - Dark Stonewash | Size 32x34",
    "Close-up of a bee on a yellow sunflower, (c) 2019 John Smith",
    "🐶 puppy sleeping on a blue blanket 🐾 #cute #dog",
    "NEW YORK CITY SKYLINE AT NIGHT WITH LIGHTS REFLECTED IN THE HUDSON RIVER",
    "cat", "", "an apple a day keeps the doctor away, they say; don't they?",
    "Café au lait served with croissants at a small Parisian bistro in the morning sun",
    "She said ''hello'' and waved at the passing train near the station",
    "3 kids, 2 cats & 1 dog: our family photo at the beach (summer 2021)",
]


@pytest.fixture
def open_clip_syntax(monkeypatch):
    """open_clip's syntax_mask_tokenize, recording the words it keeps. Offline, so its nltk.download
    calls are skipped and word_tokenize runs without punkt's sentence splitter (preserve_line),
    exactly as ours does."""
    import open_clip.tokenizer as oc

    monkeypatch.setattr(oc, "_nltk_init", True)
    monkeypatch.setattr(nltk.tokenize, "word_tokenize", functools.partial(nltk.tokenize.word_tokenize, preserve_line=True))

    def kept_words(captions, n_words):
        texts = []
        oc.syntax_mask_tokenize(captions, n_words + 2, 1, 2, lambda text: texts.append(text) or [])
        return [t.split(" ") if t else [] for t in texts]

    return kept_words


def test_context_tagging_keeps_open_clips_words(open_clip_syntax, monkeypatch):
    captions = generate_captions(240, seed=11) + TRICKY
    tagged = [syntax.tag_words(caption) for caption in captions]
    for n_words in (6, 14):
        ours = [keep_by_priority(words, n_words, priorities=prios) for words, prios in tagged]
        # open_clip sorts with np.argsort (quicksort: ties broken arbitrarily); with a stable sort,
        # the only difference left, the kept words must be identical.
        real_argsort = __import__("numpy").argsort
        monkeypatch.setattr("numpy.argsort", functools.partial(real_argsort, kind="stable"))
        assert open_clip_syntax(captions, n_words) == ours
        monkeypatch.setattr("numpy.argsort", real_argsort)
        # and as shipped: the same number of words, every word above the tie class kept by both
        for caption, (words, prios), mine, theirs in zip(captions, tagged, ours, open_clip_syntax(captions, n_words)):
            assert len(theirs) == len(mine)
            if len(words) > n_words:
                cut = sorted(prios)[n_words - 1]
                sure = [w for w, p in zip(words, prios) if p < cut]
                it = iter(theirs)
                assert all(w in it for w in sure), caption


def test_context_priorities_follow_words_to_their_pieces(tok):
    caption = 'A "vintage" red car\'s sunflowers, close-up'
    encoding, _ = tok.encoding(caption)
    prios = syntax.context_priorities(caption, encoding.offsets)
    words, word_prios = syntax.tag_words(caption)
    by_word = dict(zip(words, word_prios))
    pieces = dict(zip(encoding.tokens, prios))
    assert pieces["car"] == by_word["car"] == 1
    assert pieces["red"] == by_word["red"]
    assert pieces["sun"] == pieces["##flower"] == pieces["##s"] == by_word["sunflowers"], "a word's pieces share its priority"
    assert pieces['"'] == 4  # quotes: NLTK rewrites them as `` and '', still matched to the caption
