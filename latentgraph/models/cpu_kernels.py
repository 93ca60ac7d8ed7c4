"""Convolutions the CPU runs faster as one matrix product.

oneDNN's convolution (what ``F.conv2d`` calls on the CPU) reorders the weight into its blocked
layout on every call. For a wide 3x3 kernel over few pixels — SD's 1280-channel levels at 8x8
and 4x4 latents, where a (1280, 1280, 3, 3) weight is 59 MB and the image is 64 pixels — that
reorder costs more than the arithmetic: on this project's 2-core AVX-512 machine a
1280 -> 1280 convolution over a batch of two 8x8 latents takes 24 ms through oneDNN and 12 ms as
an unfold (im2col) and one GEMM on the weight as it is stored, with no second copy of the weight.
Where the pixels are many the GEMM loses (320 channels at 64x64: 34 ms vs 82 ms), so the choice
is per call, by the ratio of weight elements to output pixels (``GEMM_RATIO``), measured by
``bench/conv_kernels.py``. In bf16 (``--precision fast``) oneDNN's 3x3 kernels use the CPU's
bf16 instructions and are harder to beat (a higher ratio), while its 1x1 ones lose to the plain
GEMM at every SD shape measured. SD1.5 at 256², one CFG-batch forward: 1.64 -> 1.25 s in fp32,
0.53 -> 0.43 s in bf16; at 512² 5.64 -> 5.31 s and 1.61 -> 1.57 s.

The result is the same convolution summed in another order: fp32 results differ from oneDNN's
in the last bits (relative 1e-6), the same size of difference as between two oneDNN builds.
Only fp32 and bf16 CPU inference takes the path; gradients, other devices, groups, dilation
and non-zero padding modes use ``nn.Conv2d`` unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# GEMM when weight elements per output pixel (batch x height x width) reach this, and the
# weight is big enough that its reorder shows (bench/conv_kernels.py prints the crossover).
# bf16 has its own: oneDNN's bf16 convolution (AMX, AVX512-BF16) is the harder one to beat.
GEMM_RATIO = 25_000
GEMM_RATIO_BF16 = 50_000
GEMM_MIN_WEIGHT = 1 << 21
# a bf16 1x1 convolution is a plain GEMM, faster than oneDNN's at every SD shape measured
GEMM_MIN_WEIGHT_BF16_1X1 = 1 << 16
_DTYPES = (torch.float32, torch.bfloat16)


def gemm_pays(weight: torch.Tensor, batch: int, out_h: int, out_w: int) -> bool:
    """Whether a convolution of this weight over this output is faster as unfold + GEMM."""
    pixels = max(1, batch * out_h * out_w)
    if weight.dtype == torch.bfloat16 and weight.shape[-2:] == (1, 1):
        return weight.numel() >= GEMM_MIN_WEIGHT_BF16_1X1
    ratio = GEMM_RATIO_BF16 if weight.dtype == torch.bfloat16 else GEMM_RATIO
    return weight.numel() >= GEMM_MIN_WEIGHT and weight.numel() >= ratio * pixels


def conv2d_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """F.conv2d (groups 1, dilation 1, zero padding) as im2col and one GEMM over the whole
    batch, with no copy of the weight: (out, in*kh*kw) @ (in*kh*kw, batch*pixels), or its
    transpose where x is channels_last (the output is then channels_last too). A channels_last
    weight is read as (out, kh*kw*in), and the columns are ordered to match."""
    batch, channels = x.shape[:2]
    out_channels, _, kh, kw = weight.shape
    out_h = (x.shape[2] + 2 * padding[0] - kh) // stride[0] + 1
    out_w = (x.shape[3] + 2 * padding[1] - kw) // stride[1] + 1
    if kh == kw == 1 and padding == (0, 0) and stride == (1, 1):
        cols = x.reshape(batch, channels, 1, -1)  # a 1x1 kernel needs no unfold
    else:  # (B, in*kh*kw, pixels), as (B, in, kh*kw, pixels)
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride).view(batch, channels, kh * kw, -1)
    if is_channels_last(weight):
        w2d = weight.permute(0, 2, 3, 1).reshape(out_channels, -1)  # (out, kh*kw*in): a view
        cols = cols.permute(2, 1, 0, 3)  # (kh*kw, in, B, pixels)
    else:
        w2d = weight.reshape(out_channels, -1)
        cols = cols.permute(1, 2, 0, 3)  # (in, kh*kw, B, pixels)
    cols = cols.reshape(w2d.shape[1], -1)  # (K, B*pixels): the one copy
    if is_channels_last(x):  # (B*pixels, out) is NHWC: BLAS reads both operands transposed
        out = cols.t().mm(w2d.t()) if bias is None else torch.addmm(bias, cols.t(), w2d.t())
        return out.view(batch, out_h, out_w, out_channels).permute(0, 3, 1, 2)
    out = w2d.mm(cols) if bias is None else torch.addmm(bias.unsqueeze(1), w2d, cols)
    return out.view(out_channels, batch, out_h, out_w).transpose(0, 1).contiguous()


def is_channels_last(t: torch.Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also NCHW, as a 1x1 map is)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes the GEMM path on the CPU where ``gemm_pays``; the same
    parameters, state-dict keys and behaviour everywhere else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._gemm_applies(x):
            out_h = (x.shape[2] + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
            out_w = (x.shape[3] + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
            if gemm_pays(self.weight, x.shape[0], out_h, out_w):
                return conv2d_gemm(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x)

    def _gemm_applies(self, x: torch.Tensor) -> bool:
        w = self.weight
        return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and w.dtype == x.dtype
                and w.device.type == "cpu" and self.groups == 1 and self.dilation == (1, 1)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple)
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))


def cpu_bf16_native() -> bool:
    """Whether this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX tiles), which
    make bf16 convolutions and matrix products several times faster than fp32. Without them
    oneDNN emulates bf16, slower than fp32, so fast precision falls back to fp32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)
