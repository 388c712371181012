"""The largest micro-batch that fits: double until a probe fails, then bisect, within a fixed
number of probes so the search stays short (each probe builds the model and runs two steps)."""
from __future__ import annotations


def largest_fitting(fits, start: int, limit: int, max_probes: int = 8, multiple: int = 1) -> int:
    """The largest batch in [start, limit] (a multiple of `multiple` where it can be) for which
    `fits(batch)` is True, found with at most `max_probes` calls. Raises when `start` fails."""
    if not 1 <= start <= limit:
        raise ValueError(f"batch search needs 1 <= start <= limit, got start={start}, limit={limit}")
    probes = 0

    def probe(b: int) -> bool:
        nonlocal probes
        probes += 1
        return fits(b)

    if not probe(start):
        raise RuntimeError(f"micro-batch {start} does not fit; start the search lower")
    ok, bad = start, None
    while probes < max_probes and ok < limit:  # doubling
        b = min(2 * ok, limit)
        if probe(b):
            ok = b
        else:
            bad = b
            break
    while bad is not None and probes < max_probes:  # bisection between a fit and a failure
        mid = (ok + bad) // 2
        if mid >= multiple:
            mid -= mid % multiple
        if mid <= ok:
            break
        if probe(mid):
            ok = mid
        else:
            bad = mid
    return ok
