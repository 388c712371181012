"""Every random number generator a run draws from (Python, NumPy, torch, CUDA), saved and restored
as JSON: a checkpoint resumes the same draws, and an evaluation in the middle of a stage leaves
the training draws as they were."""
from __future__ import annotations

import json
import random

import torch


def rng_state() -> dict:
    """Every RNG the run draws from, as JSON."""
    import numpy as np

    state = {
        "python": json.loads(json.dumps(random.getstate())),
        "numpy": [v.tolist() if hasattr(v, "tolist") else v for v in np.random.get_state()],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state().tolist()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8))

