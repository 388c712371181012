"""Attention on the GPU, forward and backward, for every backend the config offers, at the head
dims of the towers we train (64: text and B/16; 80: H/14's image tower; 104: bigG's) and the
sequence lengths of the recipes (8: the 84 px stage's text; 37: its image tokens with the class
token; 180: 224 px with 30% masked; 346: 336 px with 40% masked), against torch's math backend
in float32 on the same weights. Each case names the kernel that really ran (profiler), and the
kernel table is printed at the end. Skipped without CUDA."""
import importlib.util

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from clipav2.models.attention import BACKENDS, Attention
from clipav2.models.kernels import attention_kernels, describe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

HEAD_DIMS = (64, 80, 104)
LENGTHS = (8, 37, 180, 346)
HEADS = 4
# the kernel a backend that names one must run; plain sdpa lets torch choose
MUST_RUN = {"sdpa_flash": "flash", "sdpa_cudnn": "cudnn", "flash_attn": "flash_attn", "xformers": "xformers"}
PACKAGES = {"flash_attn": "flash_attn", "xformers": "xformers"}
# relative error of bf16 inputs and weights against the float32 math kernel (bf16 keeps 8 bits:
# rounding alone gives ~4e-3 relative per operand; the kernels add their own accumulation order)
TOLERANCE = 2e-2


@pytest.fixture(scope="module")
def kernels(request):
    """{(backend, head dim, length): what ran}, printed as a table when the module ends."""
    ran = {}
    yield ran
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    if report and ran:
        report.write_line("\nattention kernels that ran (bf16, forward calls):")
        for (backend, hd, t), kernel in sorted(ran.items()):
            report.write_line(f"  {backend:<11} head dim {hd:>3}  length {t:>3}  {kernel}")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_forward_and_backward_match_the_math_kernel(backend, head_dim, length, kernels):
    package = PACKAGES.get(backend)
    if package and importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (the 'gpu' extra)")
    torch.manual_seed(head_dim * 1000 + length)  # fresh inputs per case
    width = HEADS * head_dim
    fast = Attention(width, HEADS, backend).cuda().to(torch.bfloat16)
    ref = Attention(width, HEADS, "sdpa").cuda()
    ref.load_state_dict({k: v.float() for k, v in fast.state_dict().items()})
    x = torch.randn(3, length, width, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    upstream = torch.randn(3, length, width, device="cuda", dtype=torch.bfloat16)

    with attention_kernels() as ran:
        out = fast(x)
        out.backward(upstream)
    torch.cuda.synchronize()
    kernels[(backend, head_dim, length)] = describe(ran)

    x_ref = x.detach().float().requires_grad_()
    with sdpa_kernel(SDPBackend.MATH):
        want = ref(x_ref)
        want.backward(upstream.float())

    assert len(ran) == 1, f"expected one kernel for every call, got {describe(ran)}"
    if backend in MUST_RUN:
        assert MUST_RUN[backend] in ran, f"{backend} ran {describe(ran)}"
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    errors = {"output": _relative(out, want), "input grad": _relative(x.grad, x_ref.grad),
              "qkv weight grad": _relative(fast.qkv.weight.grad, ref.qkv.weight.grad)}
    assert max(errors.values()) < TOLERANCE, errors
