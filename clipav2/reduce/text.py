"""Text token-length reduction: keep `k` of a caption's word pieces, in their original order.
The registry `REDUCTIONS` (name -> `TextReduction`: the selection, a pure function over piece
lists, and what it needs per caption) is the one list the config, the text transform, preview and
bench read; captions that already fit are returned whole, so every strategy keeps min(n, k).

    truncate  the first k pieces (open_clip's default)
    random    a random subset of k pieces
    block     one random contiguous window of k pieces
    syntax         CLIPA's noun_tokenize (clipa_jax/transforms/bert_ops.py): when the caption has
                   more than k words, keep the k words whose first pieces have the highest
                   part-of-speech priority (nouns, adjectives, verbs, rest; ties keep the earlier
                   word), in caption order; then, either way, the first k of their pieces
    syntax_pieces  the same ranking over single pieces, triggered by the piece count

`rng` is a `random.Random` seeded per sample; `priorities[i]` is piece i's priority (lower first);
`words[i]` is the index of the word piece i belongs to (0, 0, 1, 2, 2, ...).
"""
import random as _random
from dataclasses import dataclass
from typing import Callable, Optional, Sequence


def truncate(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities=None) -> list:
    return list(pieces[:k])


def random(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities=None) -> list:
    if len(pieces) <= k:
        return list(pieces)
    return [pieces[i] for i in sorted(rng.sample(range(len(pieces)), k))]


def block(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities=None) -> list:
    if len(pieces) <= k:
        return list(pieces)
    start = rng.randint(0, len(pieces) - k)
    return list(pieces[start : start + k])


def syntax(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities: Sequence[int] = (),
           words: Sequence[int] = ()) -> list:
    if len(words) != len(pieces) or len(priorities) != len(pieces):
        raise ValueError(f"words, priorities: {len(words)}, {len(priorities)} values for {len(pieces)} pieces")
    if not pieces or words[-1] < k:  # at most k words: plain truncation of the pieces
        return list(pieces[:k])
    starts = [0] + [i for i, (a, b) in enumerate(zip(words, words[1:]), 1) if a != b]
    kept = sorted(sorted(range(len(starts)), key=lambda w: priorities[starts[w]])[:k])  # stable: ties keep caption order
    ends = starts[1:] + [len(pieces)]
    out = []
    for w in kept:
        out += pieces[starts[w] : ends[w]]
    return out[:k]


def syntax_pieces(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities: Sequence[int] = ()) -> list:
    if len(pieces) <= k:
        return list(pieces)
    if len(priorities) != len(pieces):
        raise ValueError(f"priorities: {len(priorities)} values for {len(pieces)} pieces")
    kept = sorted(range(len(pieces)), key=priorities.__getitem__)[:k]  # sorted() is stable
    kept.sort()
    return [pieces[i] for i in kept]


@dataclass(frozen=True)
class TextReduction:
    select: Callable
    describe: str  # how the stage header names it
    priorities: str = ""  # "" | "table": one per vocabulary entry | "context": each word tagged in its sentence
    words: bool = False  # ranks whole words: needs each piece's word index
    randomized: bool = False  # draws from the per-sample generator
    clip_bpe: bool = False  # also with CLIP's BPE tokenizer (CLIPA v1: clipa_torch has these two)

    @staticmethod
    def kept_count(n_pieces: int, k: int) -> int:
        return min(n_pieces, k)


REDUCTIONS = {
    "truncate": TextReduction(truncate, "truncated", clip_bpe=True),
    "random": TextReduction(random, "random words kept", randomized=True),
    "block": TextReduction(block, "a random block kept", randomized=True),
    "syntax": TextReduction(syntax, "syntax mask", priorities="table", words=True, clip_bpe=True),
    "syntax_pieces": TextReduction(syntax_pieces, "syntax mask over pieces", priorities="table"),
    "syntax_context": TextReduction(syntax_pieces, "syntax mask in context", priorities="context"),  # open_clip's tagging
}


def supported(tokenizer_mode: str) -> tuple[str, ...]:
    """The reductions a stage's tokenizer mode offers: every one with WordPiece, two with CLIP's BPE."""
    return tuple(n for n, r in REDUCTIONS.items() if tokenizer_mode != "clip_bpe" or r.clip_bpe)


def get(name: str) -> TextReduction:
    if name not in REDUCTIONS:
        raise ValueError(f"text_reduction: {name!r} is not one of {', '.join(REDUCTIONS)}")
    return REDUCTIONS[name]
