"""One deterministic sample stream per (rank, worker).

The stream with id g of G (g = rank * workers + worker) is a pure function of (seed, stage,
generation, G, g, shard list, shuffle buffer):

- epoch e: the data set is cut into units (a shard, or a 1/n slice of a shard when there are
  fewer shards than streams), the units are permuted with a seed of (seed, stage, generation,
  e) and stream g reads units[g::G]. Within an epoch the G streams therefore read disjoint
  records, and together every record once.
- the records of the epoch go through a shuffle buffer seeded by (…, e, g) that drains at the
  end of the epoch, so an epoch's order never depends on an earlier epoch.
- the augmentation of the record at position p of epoch e is seeded by (…, e, g, p).

So a stream's position is just (epoch, position in epoch): to resume, a worker re-reads the
raw records of the current epoch (no decoding) up to that position and carries on.
"""
from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from dataclasses import dataclass

import torch

from clipav2.data.records import BadRecord, caption, image_bytes
from clipav2.data.shards import iter_records

MAX_DRY_EPOCHS = 3  # epochs in a row without one good sample: the data set is unusable


def derive_seed(*parts) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


class NoUsableData(RuntimeError):
    """A stream read whole epochs without one usable record (e.g. its only shard is garbage)."""

    def __init__(self, message: str):
        super().__init__(message)

    @staticmethod
    def line(e: BaseException) -> str:
        """The one-line reason, also when a DataLoader worker re-raised it with its traceback."""
        last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        return last.split("NoUsableData: ", 1)[-1]


@dataclass(frozen=True)
class StreamSpec:
    urls: tuple
    seed: int
    stage: str
    n_streams: int
    shuffle_buffer: int
    generation: int = 0

    def units(self, epoch: int, stream: int) -> list:
        """(url, slice, n_slices) this stream reads in `epoch`."""
        n_slices = max(1, math.ceil(self.n_streams / len(self.urls)))
        units = [(url, j, n_slices) for url in self.urls for j in range(n_slices)]
        random.Random(derive_seed(self.seed, self.stage, self.generation, "units", epoch)).shuffle(units)
        return units[stream :: self.n_streams]

    def rng(self, *parts) -> random.Random:
        return random.Random(derive_seed(self.seed, self.stage, self.generation, *parts))


def buffer_shuffle(items, size: int, rng: random.Random):
    """Classic streaming shuffle: keep `size` items, emit a random one per arrival; drain at end."""
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            i = rng.randrange(len(buf))
            buf[i], buf[-1] = buf[-1], buf[i]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def epoch_records(spec: StreamSpec, stream: int, epoch: int, events: list):
    """(position, key, record) of one stream's epoch in shuffled order; shard-level problems are
    appended to `events` as the reader meets them."""
    def read():
        for url, j, n in spec.units(epoch, stream):
            yield from iter_records(url, events, j, n)

    rng = spec.rng("shuffle", epoch, stream)
    for position, (key, record) in enumerate(buffer_shuffle(read(), spec.shuffle_buffer, rng)):
        yield position, key, record


def text_key(spec: StreamSpec, epoch: int, key: str) -> str:
    """The key the text transform seeds its random reductions with: fresh draws each epoch."""
    return key if epoch == 0 and spec.generation == 0 else f"{key}@{spec.generation}.{epoch}"


def new_state() -> dict:
    return {"epoch": 0, "position": 0, "skipped": {}}


def sample_batches(spec: StreamSpec, stream: int, state: dict, batch_size: int, image_transform, text_transform):
    """Infinite micro-batches of one stream, starting at `state` (epoch, position, skipped).
    Each batch carries the stream state after its last record in "_state"."""
    epoch, skip_to = state["epoch"], state["position"]
    skipped = Counter(state["skipped"])
    images, texts, keys = [], [], []
    dry = 0
    while True:
        events, good, position = [], 0, -1
        for position, key, record in epoch_records(spec, stream, epoch, events):
            if position < skip_to:  # fast-forward: these were consumed (and counted) before
                events.clear()
                continue
            skipped.update(events)
            events.clear()
            try:
                image = image_transform(image_bytes(record), spec.rng("augment", epoch, stream, position))
                text = text_transform(caption(record), text_key(spec, epoch, key))
            except BadRecord as e:
                skipped[e.reason] += 1
                continue
            good += 1
            images.append(image)
            texts.append(text)
            keys.append(key)
            if len(keys) == batch_size:
                after = {"epoch": epoch, "position": position + 1, "skipped": dict(skipped)}
                yield {"images": torch.stack(images), "text": torch.stack(texts), "keys": keys,
                       "_stream": stream, "_state": after}
                images, texts, keys = [], [], []
        skipped.update(events)
        if good:
            dry = 0
        elif skip_to == 0:  # a whole epoch read, not just the tail of a resumed one
            dry += 1
        if dry >= MAX_DRY_EPOCHS:
            shown = ", ".join(spec.urls[:3]) + (f" and {len(spec.urls) - 3} more" if len(spec.urls) > 3 else "")
            raise NoUsableData(
                f"data stream {stream} of {spec.n_streams}: {dry} epochs in a row without one usable "
                f"sample from {len(spec.urls)} shards ({shown}; skipped so far: {dict(skipped)})"
            )
        epoch, skip_to = epoch + 1, 0
