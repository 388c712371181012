"""Attention backends against a float64 reference; missing optional backends fail clearly."""
import importlib.util

import pytest
import torch

from clipav2.models import create_model
from clipav2.models.attention import Attention, get_attention

HAS_CUDA = torch.cuda.is_available()


def _reference(q, k, v):
    """softmax(q k^T / sqrt(head_dim)) v in float64, (B, T, H, hd) layout."""
    q, k, v = (t.double().transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return (scores.softmax(-1) @ v).transpose(1, 2)


def _qkv(device, dtype, b=2, t=37, h=4, hd=64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, t, h, hd, generator=g).to(device, dtype) for _ in range(3)]


def test_sdpa_on_cpu_matches_float64():
    q, k, v = _qkv("cpu", torch.float32)
    out = get_attention("sdpa")(q, k, v)
    assert out.shape == q.shape
    torch.testing.assert_close(out.double(), _reference(q, k, v), atol=1e-5, rtol=1e-5)


def test_attention_module_matches_float64_on_its_own_projections():
    torch.manual_seed(0)
    attn = Attention(64, 4)
    x = torch.randn(2, 9, 64)
    q, k, v = attn.qkv(x).view(2, 9, 3, 4, 16).unbind(2)
    want = attn.proj.weight.double() @ _reference(q, k, v).reshape(2, 9, 64).unsqueeze(-1)
    want = want.squeeze(-1) + attn.proj.bias.double()
    torch.testing.assert_close(attn(x).double(), want, atol=1e-5, rtol=1e-5)


GPU_BACKENDS = [
    pytest.param("sdpa", None, marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")),
    pytest.param("flash_attn", "flash_attn", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")),
    pytest.param("xformers", "xformers", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")),
]


@pytest.mark.parametrize("backend, package", GPU_BACKENDS)
def test_gpu_backends_match_float64_in_bf16(backend, package):
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} not installed (the 'gpu' extra)")
    q, k, v = _qkv("cuda", torch.bfloat16)
    out = get_attention(backend)(q, k, v)
    torch.testing.assert_close(out.double(), _reference(q, k, v), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend, package", [("flash_attn", "flash_attn"), ("xformers", "xformers")])
def test_missing_backend_names_the_gpu_extra(backend, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    with pytest.raises(ImportError, match=r"clipav2\[gpu\]"):
        create_model("tiny", attention=backend)


def test_sdpa_flash_runs_the_flash_kernel_on_cpu_and_matches_float64():
    """`sdpa_flash` restricts SDPA to its flash kernel (torch has a CPU one): the profiler names it."""
    from clipav2.models.kernels import attention_kernels

    q, k, v = _qkv("cpu", torch.float32)
    with attention_kernels() as ran:
        out = get_attention("sdpa_flash")(q, k, v)
    assert set(ran) == {"flash (cpu)"}, ran
    torch.testing.assert_close(out.double(), _reference(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(HAS_CUDA, reason="on CUDA the cuDNN kernel may run")
def test_sdpa_cudnn_where_cudnn_cannot_run_is_an_error():
    q, k, v = _qkv("cpu", torch.float32)
    with pytest.raises(RuntimeError):
        get_attention("sdpa_cudnn")(q, k, v)
