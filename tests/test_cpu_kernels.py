"""The CPU convolution that runs as unfold + GEMM (models/cpu_kernels.py): same numbers as
F.conv2d to fp32 rounding, taken only where it pays and only for inference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from latentgraph.models import cpu_kernels
from latentgraph.models.cpu_kernels import Conv2d, conv2d_gemm, gemm_pays
from latentgraph.models.unet import UNetConfig, UNetModel


@pytest.mark.parametrize("kernel,stride,padding,bias", [
    (3, 1, 1, True), (3, 2, 1, True), (3, 1, 0, False), (1, 1, 0, True), (1, 1, 0, False), (3, 2, 0, True),
])
def test_gemm_convolution_equals_conv2d(kernel, stride, padding, bias):
    gen = torch.Generator().manual_seed(kernel * 10 + stride)
    x = torch.randn(3, 24, 9, 7, generator=gen)
    w = torch.randn(40, 24, kernel, kernel, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    want = F.conv2d(x, w, b, stride=stride, padding=padding)
    got = conv2d_gemm(x, w, b, (stride, stride), (padding, padding))
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)  # values up to ~60: fp32 rounding


def test_the_choice_follows_weight_per_pixel():
    big = torch.empty(1280, 1280, 3, 3, device="meta")  # 14.7M elements
    assert gemm_pays(big, 2, 8, 8)  # SD's deepest level at 256x256: 128 output pixels
    assert gemm_pays(big, 2, 4, 4)
    assert not gemm_pays(big, 2, 64, 64)  # 8192 pixels: oneDNN wins
    small = torch.empty(64, 64, 3, 3, device="meta")
    assert not gemm_pays(small, 1, 1, 1)  # too small for the reorder to matter


def _counting(monkeypatch):
    calls = []
    real = cpu_kernels.conv2d_gemm

    def spy(*args):
        calls.append(args[1].shape)
        return real(*args)

    monkeypatch.setattr(cpu_kernels, "conv2d_gemm", spy)
    return calls


def test_module_takes_the_gemm_path_only_for_cpu_inference(monkeypatch):
    calls = _counting(monkeypatch)
    monkeypatch.setattr(cpu_kernels, "GEMM_MIN_WEIGHT", 0)
    monkeypatch.setattr(cpu_kernels, "GEMM_RATIO", 0)
    conv = Conv2d(32, 48, 3, padding=1)
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        want = F.conv2d(x, conv.weight, conv.bias, padding=1)
        torch.testing.assert_close(conv(x), want, rtol=1e-5, atol=1e-4)
    assert calls == [(48, 32, 3, 3)]
    out = conv(x)  # gradients wanted: nn.Conv2d's own path, and its autograd
    out.sum().backward()
    assert conv.weight.grad is not None and len(calls) == 1
    with torch.no_grad():
        Conv2d(32, 32, 3, padding=1, groups=2)(x)
        Conv2d(32, 48, 3, padding=1, padding_mode="reflect")(x)
        conv.double()(x.double())
    assert len(calls) == 1  # groups, reflect padding and fp64 stay with nn.Conv2d


def test_state_dict_keys_are_nn_conv2d_keys():
    ours, plain = Conv2d(4, 8, 3), torch.nn.Conv2d(4, 8, 3)
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert isinstance(ours, torch.nn.Conv2d)


def test_tiny_unet_forward_is_unchanged_by_the_path(monkeypatch):
    """A tiny SD1.5-shaped UNet with the GEMM path forced on every convolution gives oneDNN's
    result to fp32 rounding (the default thresholds leave tiny models on oneDNN, bit for bit)."""
    torch.manual_seed(0)
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                     transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=16)
    unet = UNetModel(cfg).eval()
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 5, 16)
    calls = _counting(monkeypatch)
    with torch.inference_mode():
        default = unet(x, t, ctx)
        assert calls == []
        monkeypatch.setattr(cpu_kernels, "GEMM_MIN_WEIGHT", 0)
        monkeypatch.setattr(cpu_kernels, "GEMM_RATIO", 0)
        forced = unet(x, t, ctx)
    assert len(calls) == sum(isinstance(m, Conv2d) for m in unet.modules())
    torch.testing.assert_close(forced, default, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("x_cl,w_cl", [(True, False), (False, True), (True, True)])
def test_gemm_convolution_in_channels_last(x_cl, w_cl):
    """channels_last weights are read in place; a channels_last input gives a channels_last
    output (no layout mixing downstream)."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 16, 6, 5, generator=gen)
    w, b = torch.randn(24, 16, 3, 3, generator=gen), torch.randn(24, generator=gen)
    want = F.conv2d(x, w, b, padding=1)
    cl = torch.channels_last
    got = conv2d_gemm(x.contiguous(memory_format=cl) if x_cl else x, w.contiguous(memory_format=cl) if w_cl else w,
                      b, (1, 1), (1, 1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert got.is_contiguous(memory_format=cl) == x_cl and got.is_contiguous() == (not x_cl)


def test_bf16_needs_more_weight_per_pixel():
    """oneDNN's bf16 convolution is the harder to beat: 1280 channels at 16x16 (28800 weight
    elements per pixel) is GEMM in fp32 and oneDNN in bf16; at 8x8 both are GEMM."""
    fp32 = torch.empty(1280, 1280, 3, 3, device="meta")
    bf16 = torch.empty(1280, 1280, 3, 3, device="meta", dtype=torch.bfloat16)
    assert gemm_pays(fp32, 2, 16, 16) and not gemm_pays(bf16, 2, 16, 16)
    assert gemm_pays(fp32, 2, 8, 8) and gemm_pays(bf16, 2, 8, 8)


def test_bf16_pointwise_convolutions_are_gemms():
    wide = torch.empty(640, 320, 1, 1, device="meta", dtype=torch.bfloat16)
    assert gemm_pays(wide, 2, 64, 64)
    assert not gemm_pays(wide.float(), 2, 64, 64)  # fp32: oneDNN's 1x1 is as fast or faster there
    assert not gemm_pays(torch.empty(64, 32, 1, 1, device="meta", dtype=torch.bfloat16), 2, 8, 8)  # tiny
