"""CLIP's byte-pair tokenizer for the CLIPA v1 recipes (`tokenizer_mode: clip_bpe`), packed the
way clipa_torch (an open_clip fork) packs it:

    <start_of_text> t1 .. tk <end_of_text>  then 0, truncated to L with <end_of_text> kept last

The byte-pair encoding itself (49,408 entries, ftfy + html clean-up, lower case) is open_clip's
`SimpleTokenizer` with the vocabulary file open_clip ships, the code clipa_torch forked: using it
keeps the ids exact and needs no vocabulary of our own. open_clip is therefore a dependency of
the v1 recipes only (`pip install 'clipav2[v1]'`), imported when a BPE transform is built.

Reductions: "truncate" (clipa_torch tokenizer.py `tokenize`) and "syntax" (clipa_torch
tokenizer.py `syntax_mask_tokenize`, the v1 syntax mask): the caption is split into words by
`nltk.word_tokenize`, each word POS-tagged in its sentence (NN* 1, JJ* 2, VB* 3, else 4), the
L-2 words of lowest priority kept, restored to caption order and joined by spaces; that text is
then tokenized and truncated as above (a word may be several tokens).
Ties: upstream calls numpy's default `np.argsort`, which is not stable and whose tie order depends
on the numpy version and CPU (numpy >= 1.25 / 2.0 dispatch to SIMD sorts; numpy 1.24, current in
2023, used insertion sort, i.e. stable, up to 16 words). We sort stably: ties keep caption order,
the same on every machine.
"""
import functools

import nltk
import numpy as np
import torch

from clipav2.reduce import text as reduce_text
from clipav2.text import syntax
from clipav2.text.tokenizer import as_text

REDUCTIONS = reduce_text.supported("clip_bpe")
VOCAB_SIZE = 49408
PUNKT = "punkt_tab"


@functools.lru_cache(maxsize=1)
def _bpe():
    try:
        from open_clip.tokenizer import SimpleTokenizer
    except ImportError:
        raise ImportError(
            "the CLIP BPE tokenizer (tokenizer_mode clip_bpe, the CLIPA v1 recipes) uses open_clip's: "
            "pip install 'clipav2[v1]' (or open-clip-torch)"
        ) from None
    return SimpleTokenizer()


def ensure_word_splitter() -> None:
    """`nltk.word_tokenize` splits sentences first with NLTK's punkt data: find it or say how."""
    try:
        nltk.data.find(f"tokenizers/{PUNKT}/english/")
    except LookupError:
        raise syntax.NltkDataMissing(
            f"NLTK data '{PUNKT}' (needed by the CLIPA v1 syntax mask, nltk.word_tokenize) is not on "
            f"NLTK's search path {nltk.data.path}. Run: python -m nltk.downloader -d ~/nltk_data {PUNKT}"
        ) from None


def syntax_words(text: str, keep: int) -> str:
    """clipa_torch's word selection: the `keep` highest-priority words, in caption order, joined."""
    words = nltk.word_tokenize(text)
    order = np.array([syntax.priority(tag) for _, tag in nltk.pos_tag(words)])
    chosen = sorted(np.argsort(order, kind="stable")[:keep])
    return " ".join(words[i] for i in chosen)


class BpeTokenizer:
    """The pieces of open_clip's BPE; holds nothing, so it pickles for free."""

    def encode(self, text: str) -> list[int]:
        return _bpe().encode(text)

    def id_to_piece(self, ids) -> list[str]:
        decoder = _bpe().decoder
        return [decoder[i] for i in ids]


class BpeTextTransform:
    """(caption, sample_key) -> LongTensor[text_len]; picklable (the tokenizer is built per process).
    `kept` gives the ids between <start_of_text> and <end_of_text>, as the WordPiece transform."""

    def __init__(self, text_len: int, reduction: str = "truncate"):
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"text_reduction {reduction!r} is not available with the CLIP BPE tokenizer; "
                f"choose one of {', '.join(REDUCTIONS)}"
            )
        if text_len < 2:
            raise ValueError(f"text_len {text_len} leaves no room for <start_of_text> and <end_of_text>")
        self.text_len = text_len
        self.reduction = reduction
        self.tokenizer = BpeTokenizer()
        _bpe()  # fail here, in the main process, when open_clip is missing
        if reduction == "syntax":
            syntax.ensure_tagger()
            ensure_word_splitter()

    def kept(self, caption, sample_key: str = "") -> list[int]:
        text = as_text(caption)
        if self.reduction == "syntax":
            text = syntax_words(text, self.text_len - 2)
        return self.tokenizer.encode(text)[: self.text_len - 2]  # truncation keeps <end_of_text> last

    def __call__(self, caption, sample_key: str = "") -> torch.Tensor:
        bpe = _bpe()
        row = [bpe.sot_token_id, *self.kept(caption, sample_key), bpe.eot_token_id]
        out = torch.zeros(self.text_len, dtype=torch.long)
        out[: len(row)] = torch.tensor(row)
        return out


def bpe_tokenize(captions, text_len: int, reduction: str = "truncate") -> torch.Tensor:
    """(B, text_len) ids: for evaluation prompts."""
    transform = BpeTextTransform(text_len, reduction)
    return torch.stack([transform(c) for c in ([captions] if isinstance(captions, str) else captions)])
