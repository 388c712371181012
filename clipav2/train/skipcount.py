"""Skipped-record counts of the whole run: each rank's data loader counts the records it skipped
(by reason, clipav2.data.records.REASONS); the metrics and the end-of-stage line report the sum
over ranks, not rank 0's share."""
from __future__ import annotations

from collections import Counter

import torch.distributed as dist


def summed_over_ranks(world, counts: dict) -> dict:
    """{reason: count} summed over every rank (collective: every rank calls it)."""
    if world is None or not world.distributed:
        return {k: int(v) for k, v in sorted(counts.items())}
    parts = [None] * world.world_size
    dist.all_gather_object(parts, {k: int(v) for k, v in counts.items()})
    total = Counter()
    for part in parts:
        total.update(part)
    return dict(sorted(total.items()))


def describe_skipped(counts: dict) -> str:
    total = sum(counts.values())
    if not total:
        return "skipped records: none"
    return f"skipped records: {total} ({', '.join(f'{k} {v}' for k, v in counts.items())})"
