"""Every RNG a run draws from survives a JSON round trip (what a checkpoint and an evaluation
in the middle of a stage rely on)."""
import json
import random

import torch

from clipav2.rng import rng_state, set_rng_state


def test_rng_state_round_trips_through_json():
    state = json.loads(json.dumps(rng_state()))
    a = (random.random(), torch.rand(3))
    set_rng_state(state)
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])
