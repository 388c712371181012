"""The attention kernel a benchmark row reports is the one that ran: force each kernel torch has on
the CPU and read its name back from the profiler; other operators and backward calls count not."""
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from clipav2.models.kernels import attention_kernels, describe, kernel_of


def _attend(backend):
    q = torch.randn(2, 4, 9, 16, requires_grad=True)
    with sdpa_kernel(backend), attention_kernels() as ran:
        F.scaled_dot_product_attention(q, q, q).sum().backward()
        torch.relu(q).sum()
    return ran


def test_the_forced_kernel_is_the_one_named():
    assert _attend(SDPBackend.MATH) == {"math": 1}
    assert _attend(SDPBackend.FLASH_ATTENTION) == {"flash (cpu)": 1}


def test_names_of_gpu_and_package_kernels():
    assert kernel_of("aten::_scaled_dot_product_flash_attention") == "flash"
    assert kernel_of("aten::_scaled_dot_product_cudnn_attention") == "cudnn"
    assert kernel_of("aten::_scaled_dot_product_efficient_attention") == "efficient"
    assert kernel_of("aten::_scaled_dot_product_flash_attention_backward") is None
    assert kernel_of("flash_attn::_flash_attn_forward") == "flash_attn"
    assert kernel_of("aten::mm") is None
    assert describe(_attend(SDPBackend.MATH) + _attend(SDPBackend.MATH)) == "math x2"
