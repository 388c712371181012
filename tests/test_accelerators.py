"""Prices: the table, detection from device names, overrides and bad prices."""
import pytest

from clipav2.accelerators import ACCELERATORS, PriceError, detect_accelerator, get_accelerator, parse_price, resolve


@pytest.mark.parametrize("device, key", [
    ("NVIDIA A100-SXM4-40GB", "a100-40gb"), ("NVIDIA A100-PCIE-40GB", "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", "a100-80gb"), ("NVIDIA A100 80GB PCIe", "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H100 PCIe", "h100-pcie"), ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA H200", "h200"),
    ("TPU v3", "tpu-v3"), ("cpu", "cpu"), ("Tesla V100-SXM2-16GB", None),
])
def test_detection_from_the_device_name(device, key):
    assert detect_accelerator(device) == key


def test_the_paper_price_and_peaks():
    assert ACCELERATORS["a100-80gb"].price_per_hour == 1.575
    assert get_accelerator("A100").name == "a100-80gb"
    assert get_accelerator("h100").peak_flops == 989e12 and get_accelerator("a100-40gb").peak_flops == 312e12
    assert all(a.source for a in ACCELERATORS.values())


def test_h100_form_factors_have_their_own_peaks():
    """NVIDIA's datasheet gives bf16 with sparsity (SXM 1,979, PCIe 1,513, NVL 1,671 TFLOP/s);
    the dense peak is half."""
    from clipav2.cost.mfu import peak_tflops

    for device, sparse in [("NVIDIA H100 80GB HBM3", 1979), ("NVIDIA H100 PCIe", 1513), ("NVIDIA H100 NVL", 1671)]:
        assert peak_tflops(device) == pytest.approx(sparse / 2, abs=0.5), device
        assert resolve("auto", None, device)[0].peak_flops == pytest.approx(sparse / 2 * 1e12, rel=1e-3)


def test_resolve_prefers_an_explicit_price_and_detects_otherwise():
    accel, price = resolve("auto", None, "NVIDIA H100 80GB HBM3")
    assert (accel.name, price) == ("h100", ACCELERATORS["h100"].price_per_hour)
    assert resolve("h100", "2.5")[1] == 2.5
    assert resolve("auto", 1.0, "Tesla V100")[1] == 1.0
    with pytest.raises(PriceError, match="V100"):
        resolve("auto", None, "Tesla V100")
    with pytest.raises(PriceError, match="unknown accelerator 'b300'"):
        get_accelerator("b300")


@pytest.mark.parametrize("bad", ["-1", -0.5, "abc", "nan", "inf", None])
def test_bad_prices_are_named(bad):
    with pytest.raises(PriceError, match="price per GPU-hour"):
        parse_price(bad)
