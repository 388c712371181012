"""Attention backends behind one signature, selected by `ClipArch.attention`.

Every backend takes q, k, v of shape (B, T, heads, head_dim) (the fused projection's own layout,
no copy) and returns the same shape, with no mask (CLIPA masks nothing: the text tower is
bidirectional and padding is attended to). SDPA gets (B, heads, T, head_dim) views with a
contiguous last dimension, which its flash, cuDNN and memory-efficient kernels take as they are;
flash-attn and xformers take (B, T, heads, head_dim) directly.

- `sdpa`: torch picks the kernel per call (on CUDA in bf16: flash, else cuDNN or memory-efficient).
- `sdpa_flash` / `sdpa_cudnn`: SDPA restricted to that kernel (an error where it cannot run).
- `flash_attn`, `xformers`: the optional packages (`pip install 'clipav2[gpu]'`), imported only
  when chosen.
The kernel that really ran is reported by `clipav2.models.kernels.attention_kernels`.
"""
import torch
import torch.nn.functional as F
from torch import nn

from clipav2.models.arch import ATTENTION_BACKENDS as BACKENDS



def _sdpa(q, k, v):
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sdpa_only(kernel):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[kernel]

    def attend(q, k, v):
        with sdpa_kernel(backend):
            return _sdpa(q, k, v)

    return attend


def _missing(name: str, package: str) -> ImportError:
    return ImportError(
        f"attention backend {name!r} needs the {package} package, which is not installed: "
        f"pip install 'clipav2[gpu]' (or choose attention='sdpa')"
    )


def _flash_attn():
    try:  # FlashAttention-3, where its Hopper build is installed
        from flash_attn_interface import flash_attn_func
    except ImportError:
        try:
            from flash_attn import flash_attn_func
        except ImportError as e:
            raise _missing("flash_attn", "flash-attn") from e

    def attend(q, k, v):
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out  # FA3 also returns the log-sum-exp

    return attend


def _xformers():
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError as e:
        raise _missing("xformers", "xformers") from e
    return memory_efficient_attention


def get_attention(name: str):
    """The attention function for a backend name; missing optional packages fail here, at build time."""
    if name == "sdpa":
        return _sdpa
    if name in ("sdpa_flash", "sdpa_cudnn"):
        return _sdpa_only(name.removeprefix("sdpa_"))
    if name == "flash_attn":
        return _flash_attn()
    if name == "xformers":
        return _xformers()
    raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")


class Attention(nn.Module):
    """Multi-head self-attention with a fused, biased qkv projection (open_clip's in_proj layout:
    rows are [q; k; v], each head-major) and a biased output projection."""

    def __init__(self, width: int, heads: int, backend: str = "sdpa", causal: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.causal = causal  # CLIP's text tower (CLIPA v1); runs on sdpa only
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.set_backend(backend)

    def set_backend(self, backend: str) -> None:
        if self.causal and backend != "sdpa":
            raise ValueError(f"causal attention (the CLIP text tower) runs on sdpa only, not {backend!r}")
        self.backend = backend
        self.attend = get_attention(backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        if self.causal:
            q, k, v = (z.transpose(1, 2) for z in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(out.transpose(1, 2).reshape(b, t, d))
        return self.proj(self.attend(q, k, v).reshape(b, t, d))
