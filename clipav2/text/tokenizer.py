"""bert-base-uncased WordPiece through the `tokenizers` library, packed the CLIPA way.

    clipa     [CLS] p1 .. p(L-1)            then 0 (the JAX form: no [SEP])
    open_clip [CLS] p1 .. p(L-2) 0          then 0 (open_clip's HF path with its [SEP] zeroed)

Words are normalised as each side did: `clipa` as tensorflow_text's BertTokenizer (see
`clipav2.text.basic`), `open_clip` as Hugging Face's BertNormalizer. The two agree on printable
ASCII (lower-casing only), which takes a faster path.

Special tokens are deliberately not registered with the backend, so a caption that contains the
text "[CLS]" or "[PAD]" is tokenized as ordinary characters and can never inject id 101 or 0.
"""
import sys

import numpy as np
import torch
from tokenizers import Tokenizer as _Backend
from tokenizers import normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from clipav2.text import MODES
from clipav2.text.basic import MAX_WORD_BYTES, clipa_normalize, isolate_delimiters
from clipav2.text.vocab import file_sha256, find_vocab


def as_text(caption) -> str:
    """Captions arrive as str or raw bytes from shards; anything not valid UTF-8 is replaced, not fatal."""
    if isinstance(caption, str):
        return caption
    if isinstance(caption, (bytes, bytearray, memoryview)):
        return bytes(caption).decode("utf-8", errors="replace")
    raise TypeError(f"caption: expected str or bytes, got {type(caption).__name__}")


class Tokenizer:
    """WordPiece pieces of a caption and the fixed-length id row the text tower reads.

    Picklable cheaply (the path travels, the backend is rebuilt in each data-loader worker)."""

    def __init__(self, vocab=None, mode: str = "clipa"):
        if mode not in MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.vocab_path = str(find_vocab(vocab))
        self.vocab_hash = file_sha256(self.vocab_path)
        self._entries = self._read_entries(self.vocab_path)
        self.cls_id = self._entries.index("[CLS]")
        self.unk_id = self._entries.index("[UNK]")
        self._backends = None

    @staticmethod
    def _read_entries(path) -> list[str]:
        try:  # read as the backend reads it, so entry i is id i
            vocab = WordPiece.read_file(str(path))
        except Exception as e:
            raise ValueError(f"vocabulary {path}: not a WordPiece vocabulary file ({e})") from None
        entries = [""] * (max(vocab.values(), default=-1) + 1)
        for entry, index in vocab.items():
            entries[index] = entry
        for required in ("[PAD]", "[CLS]", "[UNK]"):
            if required not in entries:
                raise ValueError(f"vocabulary {path}: has no {required} entry (not a BERT WordPiece vocabulary)")
        if vocab["[PAD]"] != 0:
            raise ValueError(f"vocabulary {path}: [PAD] must be entry 0 (padding is written as 0)")
        return entries

    def __getstate__(self):  # what a data-loader worker receives: the path, not 30k strings
        return {**self.__dict__, "_entries": None, "_backends": None}

    @property
    def entries(self) -> list[str]:
        if self._entries is None:
            self._entries = self._read_entries(self.vocab_path)
        return self._entries

    def _build_backends(self):
        def wordpiece(normalizer, pre_tokenizer=pre_tokenizers.BertPreTokenizer()):
            backend = _Backend(WordPiece.from_file(self.vocab_path, unk_token="[UNK]", max_input_chars_per_word=100))
            backend.normalizer = normalizer
            backend.pre_tokenizer = pre_tokenizer
            return backend

        if self.mode == "clipa":  # `clipa_normalize` and `isolate_delimiters` did the rest
            full = wordpiece(None, pre_tokenizers.Split(" ", "removed"))
        else:  # = BertWordPieceTokenizer(lowercase=True): clean text, split CJK, strip accents, lower-case.
            full = wordpiece(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True))
        # On printable ASCII that normalizer only lower-cases: str.lower() does it ~40% faster.
        ascii_only = wordpiece(None)
        self._backends = (full, ascii_only)
        return self._backends

    @property
    def vocab_size(self) -> int:
        return len(self.entries)

    def encoding(self, caption):
        """(the backend's Encoding without special tokens, the text its offsets index: the caption
        itself, or in `clipa` mode when it is not printable ASCII its normalised form with a space
        either side of each punctuation mark and CJK ideograph)."""
        text = as_text(caption)
        full, ascii_only = self._backends or self._build_backends()
        if text.isascii() and text.isprintable():
            return ascii_only.encode(text.lower(), add_special_tokens=False), text
        normalized = isolate_delimiters(clipa_normalize(text)) if self.mode == "clipa" else text
        try:
            return full.encode(normalized, add_special_tokens=False), normalized
        except TypeError:  # lone surrogates (e.g. from surrogateescape decoding) are not encodable
            return self.encoding(text.encode("utf-8", "replace").decode("utf-8"))

    def words(self, caption, only_over: int = -1) -> tuple[list[int], list[int] | None]:
        """(piece ids, the index of the word each piece belongs to): words as the basic tokenizer
        splits them (whitespace, each punctuation mark, each CJK ideograph). The word indices are
        None when there are at most `only_over` pieces (so at most that many words): they cost."""
        encoding, text = self.encoding(caption)
        if self._may_have_long_words(text):
            return self._unknown_long_words(encoding.ids, encoding.word_ids, encoding.offsets, text)
        ids = encoding.ids
        return ids, None if len(ids) <= only_over else encoding.word_ids

    def _may_have_long_words(self, text: str) -> bool:
        return self.mode == "clipa" and not text.isascii() and len(text.encode("utf-8", "replace")) > MAX_WORD_BYTES

    def _unknown_long_words(self, ids, word_of, offsets, text):
        """tensorflow_text's WordPiece limit counts UTF-8 bytes (the backend's counts characters):
        a word over 100 bytes is one [UNK]."""
        out_ids, out_words, i = [], [], 0
        while i < len(ids):
            j = i
            while j < len(ids) and word_of[j] == word_of[i]:
                j += 1
            span = text[offsets[i][0] : offsets[j - 1][1]]
            if j - i > 1 and len(span.encode("utf-8", "replace")) > MAX_WORD_BYTES:
                out_ids.append(self.unk_id)
                out_words.append(word_of[i])
            else:
                out_ids += ids[i:j]
                out_words += word_of[i:j]
            i = j
        return out_ids, out_words

    def encode(self, caption) -> list[int]:
        """All word-piece ids of `caption`, no [CLS]/[SEP]."""
        return self.words(caption, only_over=sys.maxsize)[0]

    def budget(self, text_len: int) -> int:
        """How many word pieces fit in a row of `text_len` ids."""
        if text_len < 2:
            raise ValueError(f"text_len: {text_len} must be >= 2 ([CLS] plus one piece)")
        return text_len - (1 if self.mode == "clipa" else 2)

    def pack(self, pieces: list[int], text_len: int) -> torch.Tensor:
        """[CLS] + pieces (at most `budget` of them) padded with 0 to `text_len`."""
        pieces = pieces[: self.budget(text_len)]
        row = [self.cls_id, *pieces] + [0] * (text_len - 1 - len(pieces))
        return torch.from_numpy(np.array(row, dtype=np.int64))  # 4x faster than torch.tensor(list)

    def __call__(self, captions, text_len: int) -> torch.Tensor:
        """(B, text_len) ids, truncating: evaluation prompts and plain use."""
        if isinstance(captions, (str, bytes)):
            captions = [captions]
        rows = [self.pack(self.encode(c), text_len) for c in captions]
        return torch.stack(rows) if rows else torch.zeros(0, text_len, dtype=torch.long)

    def id_to_piece(self, ids) -> list[str]:
        return [self.entries[int(i)] for i in ids]
