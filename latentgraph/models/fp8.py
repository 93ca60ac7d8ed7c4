"""Weights stored in fp8, computed in a wider dtype: ComfyUI's "manual cast" for UNETLoader's
``weight_dtype`` fp8_e4m3fn / fp8_e4m3fn_fast / fp8_e5m2.

Every Linear, Conv2d, GroupNorm and LayerNorm of the UNet keeps its weight and bias in fp8 (one
byte a value: a quarter of fp32, half of fp16) and casts them to the input's dtype each time the
layer runs, so the result is exactly that of a model whose weights were rounded to fp8 and cast
back. The layers keep their classes' state-dict names, so LoRAs patch them as any other layer
(in float32, stored back in fp8: models/lora.py apply_lora).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import Conv2d as GemmConv2d

# UNETLoader's choices -> the dtype the weights are kept in (None: as loaded)
WEIGHT_DTYPES: dict[str, torch.dtype | None] = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    # ComfyUI's "fast" variant runs fp8 matmuls where the hardware has them; without them (CPU,
    # pre-Ada GPUs) it falls back to the manual cast, which is all latentgraph does
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def _cast(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(device=x.device, dtype=x.dtype)


class CastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class CastConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


class CastGroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)


class CastLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)


# the UNet's convolutions are cpu_kernels.Conv2d: cast, they run as plain convolutions (the
# GEMM path is for weights already in the compute dtype)
CAST_CLASSES = {nn.Linear: CastLinear, nn.Conv2d: CastConv2d, GemmConv2d: CastConv2d, nn.GroupNorm: CastGroupNorm,
                nn.LayerNorm: CastLayerNorm}


@torch.no_grad()
def manual_cast(module: nn.Module, weight_dtype: torch.dtype, compute_dtype: torch.dtype) -> nn.Module:
    """Turn ``module`` (in place) into one that stores its layers' weights in ``weight_dtype``
    and computes in ``compute_dtype`` (recorded as ``module.compute_dtype``: the UNet's callers
    cast their inputs to it). A layer of a class not in CAST_CLASSES is an error: it would run
    with fp8 weights it cannot use."""
    for name, layer in module.named_modules():
        own = list(layer.named_parameters(recurse=False))
        if not own:
            continue
        cls = CAST_CLASSES.get(type(layer))
        if cls is None and type(layer) not in CAST_CLASSES.values():
            raise TypeError(f"{name or type(module).__name__}: a {type(layer).__name__} cannot compute with "
                            f"{weight_dtype} weights")
        if cls is not None:
            layer.__class__ = cls
        for pname, p in own:
            setattr(layer, pname, nn.Parameter(p.to(weight_dtype), requires_grad=False))
    module.compute_dtype = compute_dtype
    return module


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters (what fp8 storage divides)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
