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


MAX_JSON_BYTES = 256 << 20  # a manifest of a very large sharded checkpoint is a few MB


def read_json(path, limit: int = MAX_JSON_BYTES):
    """A checkpoint's JSON file, opened only if it is a regular file (a FIFO would block the open
    or the read forever) and read only up to `limit` bytes. UnsafeCheckpoint otherwise."""
    import json
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise UnsafeCheckpoint(f"{path}: cannot be opened ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeCheckpoint(f"{path} is not a regular file")
        if info.st_size > limit:
            raise UnsafeCheckpoint(f"{path} is {info.st_size} bytes, over the {limit}-byte limit")
        data = f.read(limit + 1)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise UnsafeCheckpoint(f"{path} is not JSON ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


# What an unpickled checkpoint object may be, walked as the tree its readers walk (a list that
# holds the same list twice is walked twice): a pickle of depth 40 whose every level refers twice to
# the level below is 1.4 kB but 2^40 nodes, and walking it never ends. A real one has at most a few
# nodes per byte of pickle.
MAX_PICKLE_DEPTH = 64
NODES_PER_BYTE = 16


def check_tree(value, nbytes: int, what: str) -> None:
    """UnsafeCheckpoint if `value` (unpickled from `nbytes` bytes) is deeper than MAX_PICKLE_DEPTH
    or, walked as a tree, larger than NODES_PER_BYTE * nbytes nodes."""
    budget = [NODES_PER_BYTE * nbytes + 1024]

    def walk(v, depth):
        budget[0] -= 1
        if budget[0] < 0:
            raise UnsafeCheckpoint(f"{what} expands to more than {NODES_PER_BYTE} objects per byte of pickle "
                                   "(shared references nested many times)")
        if depth > MAX_PICKLE_DEPTH:
            raise UnsafeCheckpoint(f"{what} is nested more than {MAX_PICKLE_DEPTH} levels deep")
        if isinstance(v, dict):
            children = [x for kv in v.items() for x in kv]
        elif isinstance(v, (list, tuple, set, frozenset)):
            children = v
        elif hasattr(v, "__dict__") and not isinstance(v, type):
            children = list(vars(v).values())
        else:
            children = [getattr(v, s) for s in getattr(type(v), "__slots__", ()) if hasattr(v, s)] \
                if not isinstance(v, (str, bytes)) else ()
        for child in children:
            walk(child, depth + 1)

    walk(value, 0)


# Errors a checkpoint's bytes cannot cause: a moved library internal or a bug. They are reported
# as what they are, never taken for a damaged checkpoint (which would start the stage over).
CODE_ERRORS = (AttributeError, ImportError, NameError, NotImplementedError, SyntaxError)


def code_error(e: BaseException) -> BaseException | None:
    """The code or library error inside `e` (DCP wraps each rank's error), or None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, CODE_ERRORS):
            return e
        for failure in (getattr(e, "failures", None) or {}).values():
            inner = code_error(failure[0] if isinstance(failure, tuple) else failure)
            if inner is not None:
                return inner
        e = e.__cause__  # not __context__: a refusal raised while handling another error is a refusal
    return None
