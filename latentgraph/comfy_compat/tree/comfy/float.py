"""ComfyUI's ``comfy.float``: rounding a tensor to a weight dtype, stochastically for fp8 (each
value rounds up with the probability of its distance to the lower fp8 neighbour, so sums of
many stay unbiased), with ComfyUI's seeded generator so a pack gets the same weights."""

from __future__ import annotations

import torch

from latentgraph.comfy_compat import runtime

__all__ = ["manual_stochastic_round_to_float8", "stochastic_rounding"]

# exponent bits, mantissa bits, exponent bias
_FP8 = {torch.float8_e4m3fn: (4, 3, 7), torch.float8_e5m2: (5, 2, 15)}


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def manual_stochastic_round_to_float8(x: torch.Tensor, dtype: torch.dtype, generator=None) -> torch.Tensor:
    """``x`` stochastically rounded to the values of fp8 ``dtype`` (returned in float16),
    clamped to its range; the randomness is one uniform draw per value from ``generator``."""
    if dtype not in _FP8:
        raise ValueError("Unsupported dtype")
    e_bits, m_bits, bias = _FP8[dtype]
    x = x.half()
    magnitude = x.abs()
    sign = torch.where(magnitude == 0, 0, torch.sign(x))
    exponent = torch.clamp(torch.floor(torch.log2(magnitude)) + bias, 0, 2 ** e_bits - 1)
    normal = exponent != 0  # else a subnormal: no implicit leading one
    steps = torch.where(normal, (magnitude / (2.0 ** (exponent - bias)) - 1.0) * (2 ** m_bits),
                        magnitude / (2.0 ** (-bias + 1 - m_bits)))
    steps += torch.rand(steps.size(), dtype=steps.dtype, layout=steps.layout, device=steps.device,
                        generator=generator)
    fraction = steps.floor() / (2 ** m_bits)
    sign *= torch.where(normal, (2.0 ** (exponent - bias)) * (1.0 + fraction), (2.0 ** (-bias + 1)) * fraction)
    limits = torch.finfo(dtype)
    return sign.clamp_(limits.min, limits.max)


def stochastic_rounding(value: torch.Tensor, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """``value`` in ``dtype``: a plain conversion, except to fp8, rounded stochastically in
    slices of about 4096 x 4096 values from one generator seeded with ``seed``."""
    if dtype not in _FP8:
        return value.to(dtype=dtype)
    generator = torch.Generator(device=value.device)
    generator.manual_seed(seed)
    out = torch.empty_like(value, dtype=dtype)
    slices = max(1, value.numel() / (4096 * 4096))
    size = max(1, round(value.shape[0] / slices))
    for start in range(0, value.shape[0], size):
        out[start:start + size].copy_(manual_stochastic_round_to_float8(value[start:start + size], dtype, generator))
    return out
