"""A JSON value's shape, checked field by field before any of it is used: each check raises
BadState naming the field, what it holds and what was expected. Checkpoint state files
(clipav2.train.state_check) and the loader's saved position (clipav2.data.loader) use them."""
from __future__ import annotations

import numbers


class BadState(ValueError):
    """A checkpoint state file holds the wrong shape or types."""


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def need(ok: bool, where: str, value, expected: str) -> None:
    if not ok:
        shown = repr(value)
        raise BadState(f"{where} is {shown[:60] + '...' if len(shown) > 60 else shown}, expected {expected}")


def count(value, where: str) -> int:
    need(is_int(value) and value >= 0, where, value, "a count (an integer >= 0)")
    return value


def mapping(value, where: str) -> dict:
    need(isinstance(value, dict), where, value, "a mapping")
    return value


def int_list(value, where: str, length: int, high: int) -> None:
    need(isinstance(value, list) and len(value) == length and all(is_int(x) and 0 <= x <= high for x in value),
         where, value, f"a list of {length} integers in 0..{high}")
