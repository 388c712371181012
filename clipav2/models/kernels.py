"""Which attention kernel a piece of work really ran, read off the profiler's operator names.

`F.scaled_dot_product_attention` picks flash, cuDNN, memory-efficient or math per call (from the
dtype, head dim, device and the allowed backends), so a configured name alone does not say what
ran. Only the profiler's CPU activity is used: every call passes through the dispatcher, compiled
code included, and no CUDA profiler is needed. The profiler's own log (libkineto's
`profiler_start`/`profiler_stop` lines and, on a machine without a GPU, an "ERROR" that it found
no device) is silenced for the probe: it is noise to a user reading a training run.
"""
from __future__ import annotations

import contextlib
import os
from collections import Counter

# operator name pieces, most specific first -> the kernel's short name
_SDPA = (("flash_attention_for_cpu", "flash (cpu)"), ("flash_attention", "flash"), ("cudnn_attention", "cudnn"),
         ("efficient_attention", "efficient"), ("attention_math", "math"))


def kernel_of(op: str) -> str | None:
    """The kernel a forward attention operator stands for, or None for any other operator."""
    if op.endswith("backward") or "bwd" in op:
        return None
    if op.startswith("aten::_scaled_dot_product_"):
        return next((short for piece, short in _SDPA if piece in op), op.split("::")[1])
    if op.startswith("flash_attn"):  # flash-attn's registered ops (flash_attn::, flash_attn_3::)
        return "flash_attn"
    if op.startswith("xformers"):
        return "xformers"
    return None


@contextlib.contextmanager
def attention_kernels():
    """`with attention_kernels() as ran: work()` -> `ran`, a Counter of forward attention calls
    per kernel, filled when the block ends."""
    from torch.profiler import ProfilerActivity, profile

    # read when the profiler first starts; above every libkineto severity, so nothing prints
    # (a KINETO_LOG_LEVEL the user set wins)
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")
    ran = Counter()
    # one cycle either way; acc_events skips the "Profiler clears events" warning that
    # torch.profiler's prepare_trace gives when it finds a profiler already made
    with profile(activities=[ProfilerActivity.CPU], acc_events=True) as prof:
        yield ran
    for event in prof.events():
        kernel = kernel_of(event.name)
        if kernel:
            ran[kernel] += 1


def describe(ran: Counter) -> str:
    """'flash x56' or 'flash x32, efficient x24'; 'none' when no attention ran."""
    return ", ".join(f"{k} x{n}" for k, n in ran.most_common()) or "none"
