"""The per-sample text transform the data loader runs in its workers, and `tokenize` for
evaluation prompts.

    transform = make_text_transform(stage, vocab=cfg.data.vocab, seed=cfg.seed)
    ids = transform("a photo of a dog", sample_key="000123")   # LongTensor[stage.text_len]

Random reductions draw from a generator seeded by (seed, stage name, sample key), so a resumed
run, or another worker, drops exactly the same pieces of the same sample. (A loader that wants
new draws each epoch folds the epoch into the key.)
"""
import functools
import hashlib
import os
import random

import torch

from clipav2.reduce import text as reduce_text
from clipav2.text import syntax
from clipav2.text.bpe import BpeTextTransform, bpe_tokenize
from clipav2.text.tokenizer import Tokenizer, as_text


def sample_seed(seed: int, stage: str, key: str) -> int:
    """A 64-bit seed stable across processes and Python runs (unlike the salted `hash`)."""
    digest = hashlib.blake2b(f"{seed}\x00{stage}\x00{key}".encode("utf-8", "replace"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class TextTransform:
    """(caption, sample_key) -> LongTensor[text_len]. Picklable: the tokenizer travels as a path and
    the syntax table as 30 kB of bytes."""

    def __init__(self, tokenizer: Tokenizer, text_len: int, reduction: str, stage: str = "", seed: int = 0):
        self.how = reduce_text.get(reduction)
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.keep = tokenizer.budget(text_len)  # also validates text_len
        self.reduction = reduction
        self.stage = stage
        self.seed = seed
        self.table = None
        if self.how.priorities == "table":
            self.table = syntax.vocab_priorities(tokenizer.entries, tokenizer.vocab_hash, tokenizer.vocab_path)
        elif self.how.priorities == "context":
            syntax.ensure_tagger()  # fail here, in the main process, not in a worker

    def kept(self, caption, sample_key: str) -> list[int]:
        """The kept word-piece ids, in order (no [CLS], no padding)."""
        how, words = self.how, None
        if how.priorities == "context":
            encoding, text = self.tokenizer.encoding(caption)
            ids = encoding.ids
        elif how.words:
            ids, words = self.tokenizer.words(caption, only_over=self.keep)
        else:
            ids = self.tokenizer.encode(caption)
        if len(ids) <= self.keep or (how.words and words[-1] < self.keep):  # fits, or at most keep words
            return ids[: self.keep]
        extra = {"words": words} if how.words else {}
        if how.priorities == "table":
            extra["priorities"] = [self.table[i] for i in ids]
        elif how.priorities == "context":
            extra["priorities"] = syntax.context_priorities(text, encoding.offsets)
        if how.randomized:
            extra["rng"] = random.Random(sample_seed(self.seed, self.stage, sample_key))
        return how.select(ids, self.keep, **extra)

    def __call__(self, caption, sample_key: str = "") -> torch.Tensor:
        return self.tokenizer.pack(self.kept(caption, sample_key), self.text_len)


def make_text_transform(stage, vocab=None, seed: int = 0) -> TextTransform:
    """The transform for a `StageConfig` (its text_len, text_reduction, tokenizer_mode, name)."""
    if stage.tokenizer_mode == "clip_bpe":  # CLIPA v1: CLIP's BPE (clipav2.text.bpe)
        return BpeTextTransform(stage.text_len, stage.text_reduction)
    tokenizer = Tokenizer(vocab, mode=stage.tokenizer_mode)
    return TextTransform(tokenizer, stage.text_len, stage.text_reduction, stage.name, seed)


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(vocab, mode, env_vocab) -> Tokenizer:
    return Tokenizer(vocab, mode)


def tokenize(captions, text_len: int, mode: str = "clipa", vocab=None) -> torch.Tensor:
    """(B, text_len) ids of `captions`, truncated: for evaluation prompts."""
    if mode == "clip_bpe":
        return bpe_tokenize(captions, text_len)
    vocab = None if vocab is None else str(vocab)
    return _cached_tokenizer(vocab, mode, os.environ.get("CLIPAV2_VOCAB"))(captions, text_len)
