"""Part-of-speech priorities for the syntax mask: nouns 1, adjectives 2, verbs 3, the rest 4
(lower is kept first). English only: NLTK's tagger is an English model.

Two sources of priorities:
- `vocab_priorities`: every vocabulary entry tagged once on its own, as CLIPA's
  `_create_noun_tokenizer` does (clipa_jax/transforms/bert_ops.py): the entry is split by NLTK's
  word tokenizer, tagged, and the tag of its last token decides (an entry with no tokens is 4).
  A bytes table indexed by piece id, cached on disk keyed by the vocabulary's sha256. The data
  loader only indexes it: no tagging per caption.
- `context_priorities`: each word tagged in its sentence (open_clip's way), per caption.
"""
import bisect
import os
import warnings

import nltk

from clipav2.text.vocab import cache_dir, reachable

TAGGER = "averaged_perceptron_tagger_eng"
TABLE_VERSION = 2  # bump when the way the table is built changes
_download_tried = False
_tagger_found = False


class NltkDataMissing(LookupError):
    """NLTK's tagger data is not on NLTK's search path and could not be downloaded."""


def priority(tag: str) -> int:
    if tag.startswith("NN"):
        return 1
    if tag.startswith("JJ"):
        return 2
    if tag.startswith("VB"):
        return 3
    return 4


def _found() -> bool:
    try:
        nltk.data.find(f"taggers/{TAGGER}/")
        return True
    except LookupError:
        return False


def ensure_tagger() -> None:
    """Find the tagger on NLTK's own search path (NLTK_DATA, ~/nltk_data, ...); when missing,
    try `nltk.download` once; when that fails too, say exactly what to run."""
    global _download_tried, _tagger_found
    if _tagger_found:
        return
    if not _found() and not _download_tried:
        _download_tried = True
        if reachable("https://raw.githubusercontent.com"):
            nltk.download(TAGGER, quiet=True)
    if _found():
        _tagger_found = True
        return
    raise NltkDataMissing(
        f"NLTK data '{TAGGER}' (needed by the syntax text reductions) is not on NLTK's search path "
        f"{nltk.data.path} and could not be downloaded. Run: python -m nltk.downloader -d ~/nltk_data {TAGGER} "
        f"(or point NLTK_DATA at a directory holding taggers/{TAGGER}), or use text_reduction truncate/random/block."
    )


def _check_english(entries: list[str], name: str) -> None:
    words = [e for e in entries if e and not e.startswith("##") and not e.startswith("[")]
    english = sum(w.isascii() and w.isalpha() for w in words) / max(len(words), 1)
    if english < 0.5:
        raise ValueError(
            f"syntax mask is English-only (NLTK's English tagger), but vocabulary {name} looks non-English "
            f"({english:.0%} of its words are ASCII letters); use text_reduction truncate, random or block"
        )


def _tag_entries(entries: list[str]) -> bytes:
    ensure_tagger()
    # "##ing" -> '#', '#', 'ing'; "[UNK]" -> '[', 'UNK', ']' (tagged NN: unknown words rank as nouns)
    tagged = nltk.pos_tag_sents([words(e) for e in entries])
    return bytes(priority(tags[-1][1] if tags else "") for tags in tagged)


def vocab_priorities(entries: list[str], vocab_hash: str, name: str = "") -> bytes:
    """priority[id] for every vocabulary entry, built once and cached under `cache_dir()`."""
    _check_english(entries, name or vocab_hash[:12])
    path = cache_dir() / f"syntax-v{TABLE_VERSION}-{vocab_hash[:32]}.bin"
    if path.is_file():
        table = path.read_bytes()
        if len(table) == len(entries) and set(table) <= {1, 2, 3, 4}:
            return table
    table = _tag_entries(entries)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(table)
        os.replace(tmp, path)  # atomic: concurrent ranks building it at once are harmless
    except OSError as e:
        warnings.warn(f"could not cache the syntax table at {path}: {e}; it will be rebuilt next time")
    return table


_word_tokenizer = nltk.tokenize.NLTKWordTokenizer()


def words(text: str) -> list[str]:
    """NLTK's word tokens, as `nltk.word_tokenize(text, preserve_line=True)` (no punkt data needed;
    punkt's sentence split, which upstream runs first, splits no bert-base-uncased entry)."""
    return _word_tokenizer.tokenize(text)


def tag_words(text: str) -> tuple[list[str], list[int]]:
    """Words of `text` and their priorities, tagged in sentence context."""
    ensure_tagger()
    tokens = words(text)
    return tokens, [priority(tag) for _, tag in nltk.pos_tag(tokens)]


def _spans(text: str, tokens: list[str]):
    """(start, end) of each token in `text`, or None; NLTK rewrites '"' as `` or '' so try those."""
    pos = 0
    for tok in tokens:
        options = [tok, '"', "''", "``"] if tok in ("``", "''") else [tok]
        found = [(i, len(o)) for o in options if (i := text.find(o, pos)) >= 0]
        if not found:
            yield None
            continue
        start, length = min(found)
        yield start, start + length
        pos = start + length


def context_priorities(text: str, piece_offsets) -> list[int]:
    """A priority per word piece (given its (start, end) offsets in `text`): the priority of the
    word, tagged in context, that contains the piece; 4 when no word does."""
    tokens, prios = tag_words(text)
    starts, ends, word_prio = [], [], []
    for span, p in zip(_spans(text, tokens), prios):
        if span is not None:
            starts.append(span[0])
            ends.append(span[1])
            word_prio.append(p)
    out = []
    for start, _ in piece_offsets:
        j = bisect.bisect_right(starts, start) - 1
        out.append(word_prio[j] if j >= 0 and start < ends[j] else 4)
    return out
