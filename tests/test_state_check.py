"""The checkpoint state-file checks, fuzzed: any JSON put anywhere in a valid strategy.json,
extra/rank_N.json (RNG, ledger, data state) is either accepted or refused with BadState (a
ValueError, which resume reports as an unusable checkpoint); never another exception, which
resume would take for a code error, and never a hang."""
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clipav2.data.loader import STATE_VERSION, _check_state
from clipav2.rng import rng_state
from clipav2.train.state_check import BadState, check_extra, check_strategy_meta

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=12)


def valid_extra() -> dict:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    stream = {"epoch": 0, "position": 3, "skipped": {"corrupt_image": 1}}
    return json.loads(json.dumps({
        "stage": "pretrain", "step": 4, "samples_seen": 64, "skipped_steps": 0, "budget_stop": None,
        "rng": rng_state(),
        "data": {"version": STATE_VERSION, "layout": {"seed": 0}, "rank": 0, "generation": 0, "delivered": 4,
                 "streams": [stream]},
        "ledger": {"format": 1, "stages": {"pretrain": {"gpu_seconds": {"train": 1.5}, "usd": {"train": 0.1},
                                                       "events": {"checkpoint": 2}, "steps": 4, "samples": 64,
                                                       "lost_steps": 0}}},
    }))


META = {"strategy": "single", "stage": "pretrain", "step_count": 4, "skipped_total": 0,
        "skips": {"total": 0, "run": 0}, "world_size": 1}


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list) and len(value) < 10:
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, new):
    if not path:
        return new
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = new
    return doc


def _check_all(extra, meta):
    check_extra(extra)
    check_strategy_meta(meta)
    if isinstance(extra, dict) and "data" in extra:
        _check_state(extra["data"])


def test_the_valid_state_passes():
    _check_all(valid_extra(), dict(META))


@settings(max_examples=150, deadline=None)
@given(st.data(), JSON)
def test_any_json_anywhere_is_accepted_or_refused_with_bad_state(data, junk):
    extra, meta = valid_extra(), json.loads(json.dumps(META))
    which = data.draw(st.sampled_from(["extra", "meta"]))
    doc = extra if which == "extra" else meta
    path = data.draw(st.sampled_from(list(_paths(doc))))
    doc = _replace(doc, path, junk)
    extra, meta = (doc, meta) if which == "extra" else (extra, doc)
    try:
        _check_all(extra, meta)
    except BadState:
        pass


@pytest.mark.parametrize("change, message", [
    (lambda e: e["rng"].update(torch=e["rng"]["torch"][:5]), "rng.torch"),
    (lambda e: e.update(step="4"), "extra step is '4'"),
    (lambda e: e["data"].update(streams={}), "data state streams"),
    (lambda e: e["ledger"].update(stages=[]), "ledger stages is []"),
    (lambda e: e["rng"]["python"].__setitem__(1, [0] * 624), "rng.python state"),
])
def test_named_shapes_are_refused_naming_the_field(change, message):
    extra = valid_extra()
    change(extra)
    with pytest.raises(BadState, match=message.replace("[", r"\[").replace("]", r"\]")):
        _check_all(extra, META)
