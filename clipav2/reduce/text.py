"""Text token-length reduction: keep `k` of a caption's word pieces, in their original order.
Pure functions over piece lists, selected by name (`REDUCTIONS[stage.text_reduction]`); captions
that already fit are returned whole.

    truncate  the first k pieces (open_clip's default)
    random    a random subset of k pieces
    block     one random contiguous window of k pieces
    syntax    the k pieces of highest part-of-speech priority (nouns, adjectives, verbs, rest);
              ties keep the earlier piece (a stable sort)

`rng` is a `random.Random` seeded per sample; `priorities[i]` is piece i's priority (lower first).
"""
import random as _random
from typing import Optional, Sequence


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


def syntax(pieces: Sequence, k: int, rng: Optional[_random.Random] = None, priorities: Sequence[int] = ()) -> list:
    if len(pieces) <= k:
        return list(pieces)
    if len(priorities) != len(pieces):
        raise ValueError(f"priorities: {len(priorities)} values for {len(pieces)} pieces")
    kept = sorted(range(len(pieces)), key=priorities.__getitem__)[:k]  # sorted() is stable
    kept.sort()
    return [pieces[i] for i in kept]


REDUCTIONS = {"truncate": truncate, "random": random, "block": block, "syntax": syntax}
RANDOMIZED = ("random", "block")
