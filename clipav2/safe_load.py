"""What a checkpoint reader trusts (see docs/engine.md, "Threat model"): nothing loaded from disk
may execute code. Every pickle that torch or DeepSpeed reads while a checkpoint loads goes
through torch's `weights_only` unpickler (tensors, plain containers and numbers, and the few
classes a caller allow-lists), whatever `weights_only=` the library itself passes."""
from __future__ import annotations

import contextlib
import os

_FORCE = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"  # torch.load honours it even over an explicit weights_only=False


class UnsafeCheckpoint(ValueError):
    """A checkpoint file asks for something a reader refuses (a global outside the allow-list,
    a path outside its directory, an object where plain data belongs)."""


@contextlib.contextmanager
def weights_only_loads():
    """Within: every torch.load in this process is weights_only (DeepSpeed's readers pass
    weights_only=False in several places, DCP's byte items too)."""
    before = os.environ.get(_FORCE)
    os.environ[_FORCE] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE, None)
        else:
            os.environ[_FORCE] = before


def one_line(e: BaseException) -> str:
    """`Type: message` of the innermost cause, on one line (DCP wraps a rank's error in a
    CheckpointException whose text is a traceback; torch's unpickler errors run to 20 lines)."""
    failures = getattr(e, "failures", None)
    if failures:
        e = next(iter(failures.values()))[0]
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):  # the reason is further down
        lines = [line for line in lines if "unsupported" in line.lower() or "WeightsUnpickler" in line] or lines
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
