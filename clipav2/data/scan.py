"""One pass over shards through a stage's training pipeline: how many records are usable, which
were skipped and why, and a few examples. `clipav2 data inspect` prints this."""
from __future__ import annotations

import random
from collections import Counter

from clipav2.data.records import BadRecord, caption, image_bytes
from clipav2.data.shards import expand_urls, iter_records


def scan(pattern, image_transform, text_transform=None, n_examples: int = 3, seed: int = 0) -> dict:
    """{"samples": good records, "skipped": {reason: count}, "shards": n, "examples": [...]}."""
    urls = expand_urls(pattern)
    skipped, events, examples, good = Counter(), [], [], 0
    for url in urls:
        for key, record in iter_records(url, events):
            try:
                image = image_transform(image_bytes(record), random.Random(f"{seed}/{key}"))
                text = caption(record)
                ids = text_transform(text, key) if text_transform is not None else None
            except BadRecord as e:
                skipped[e.reason] += 1
                continue
            good += 1
            if len(examples) < n_examples:
                example = {"key": key, "caption": text, "image": list(image.shape), "image_dtype": str(image.dtype),
                           "pixel_range": [int(image.min()), int(image.max())]}
                if ids is not None:
                    example["text_ids"] = ids.tolist()
                examples.append(example)
        skipped.update(events)
        events.clear()
    return {"samples": good, "skipped": dict(sorted(skipped.items())), "shards": len(urls), "examples": examples}
