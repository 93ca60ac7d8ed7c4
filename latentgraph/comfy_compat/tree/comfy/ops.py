"""ComfyUI's ``comfy.ops``: namespaces of torch layers that packs build their networks from
(and subclass, as GGUF's quantised layers do). ``disable_weight_init``'s layers skip the
random initialisation (the weights are loaded next); ``manual_cast``'s also cast their weights
to the input's dtype and device at every call, so weights can be stored narrower than the
compute dtype. Either kind casts too when ``weight_function``/``bias_function`` (lists of
functions applied to the cast weight) are set. The fp8 matmul and cuBLAS operation sets are
not provided (``pick_operations`` asking for them is a missing-name error)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentgraph.comfy_compat import runtime

__all__ = ["CastWeightBiasOp", "cast_bias_weight", "cast_to", "cast_to_input", "disable_weight_init", "manual_cast",
           "pick_operations"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def cast_to(weight: torch.Tensor, dtype: torch.dtype | None = None, device=None, non_blocking: bool = False,
            copy: bool = False, stream=None) -> torch.Tensor:
    """``weight`` in ``dtype`` on ``device`` (either None: as it is); the same tensor when
    nothing changes and no ``copy`` is asked for."""
    if device is None or weight.device == torch.device(device):
        if not copy and (dtype is None or weight.dtype == dtype):
            return weight
        return weight.to(dtype=dtype, copy=copy)
    out = torch.empty_like(weight, dtype=dtype, device=device)
    out.copy_(weight, non_blocking=non_blocking)
    return out


def cast_to_input(weight: torch.Tensor, input: torch.Tensor, non_blocking: bool = False, copy: bool = True):
    return cast_to(weight, input.dtype, input.device, non_blocking=non_blocking, copy=copy)


def cast_bias_weight(s, input: torch.Tensor | None = None, dtype=None, device=None, bias_dtype=None) -> tuple:
    """(weight, bias) of layer ``s`` in the input's dtype and device (or those given), each
    through the layer's weight_function/bias_function lists (copied first when there are any)."""
    if input is not None:
        dtype = input.dtype if dtype is None else dtype
        bias_dtype = dtype if bias_dtype is None else bias_dtype
        device = input.device if device is None else device
    bias = None
    if s.bias is not None:
        bias = cast_to(s.bias, bias_dtype, device, copy=len(s.bias_function) > 0)
        for f in s.bias_function:
            bias = f(bias)
    weight = cast_to(s.weight, dtype, device, copy=len(s.weight_function) > 0)
    for f in s.weight_function:
        weight = f(weight)
    return weight, bias


class CastWeightBiasOp:
    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []

    def reset_parameters(self):
        return None  # the weights are loaded after the layer is made

    def forward(self, *args, **kwargs):
        if self.comfy_cast_weights or self.weight_function or self.bias_function:
            return self.forward_comfy_cast_weights(*args, **kwargs)
        kwargs.pop("out_dtype", None)  # only the casting Embedding takes it
        return super().forward(*args, **kwargs)


def _conv(base):
    class Conv(CastWeightBiasOp, base):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return self._conv_forward(input, weight, bias)
    return Conv


def _conv_transpose(base, fn, dims: int):
    class ConvTranspose(CastWeightBiasOp, base):
        def forward_comfy_cast_weights(self, input, output_size=None):
            padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, dims,
                                           self.dilation)
            weight, bias = cast_bias_weight(self, input)
            return fn(input, weight, bias, self.stride, self.padding, padding, self.groups, self.dilation)
    return ConvTranspose


class disable_weight_init:
    """torch layers that skip initialisation; they cast only when given weight functions."""

    class Linear(CastWeightBiasOp, torch.nn.Linear):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return F.linear(input, weight, bias)

    Conv1d = _conv(torch.nn.Conv1d)
    Conv2d = _conv(torch.nn.Conv2d)
    Conv3d = _conv(torch.nn.Conv3d)
    ConvTranspose1d = _conv_transpose(torch.nn.ConvTranspose1d, F.conv_transpose1d, 1)
    ConvTranspose2d = _conv_transpose(torch.nn.ConvTranspose2d, F.conv_transpose2d, 2)

    class GroupNorm(CastWeightBiasOp, torch.nn.GroupNorm):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input)
            return F.group_norm(input, self.num_groups, weight, bias, self.eps)

    class LayerNorm(CastWeightBiasOp, torch.nn.LayerNorm):
        def forward_comfy_cast_weights(self, input):
            weight, bias = cast_bias_weight(self, input) if self.weight is not None else (None, None)
            return F.layer_norm(input, self.normalized_shape, weight, bias, self.eps)

    class Embedding(CastWeightBiasOp, torch.nn.Embedding):
        def reset_parameters(self):
            self.bias = None  # cast_bias_weight reads it

        def forward_comfy_cast_weights(self, input, out_dtype=None):
            # half-precision tables are looked up as stored, then converted
            cast = None if self.weight.dtype in (torch.float16, torch.bfloat16) else out_dtype
            weight, _ = cast_bias_weight(self, device=input.device, dtype=cast)
            return F.embedding(input, weight, self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq,
                               self.sparse).to(dtype=out_dtype)

    @classmethod
    def conv_nd(cls, dims: int, *args, **kwargs):
        if dims not in (2, 3):
            raise ValueError(f"unsupported dimensions: {dims}")
        return (cls.Conv2d if dims == 2 else cls.Conv3d)(*args, **kwargs)


def _casting(base):
    return type(base.__name__, (base,), {"comfy_cast_weights": True, "__module__": __name__,
                                        "__qualname__": f"manual_cast.{base.__name__}"})


class manual_cast(disable_weight_init):
    """The same layers, always casting their weights to the input's dtype and device."""

    Linear = _casting(disable_weight_init.Linear)
    Conv1d = _casting(disable_weight_init.Conv1d)
    Conv2d = _casting(disable_weight_init.Conv2d)
    Conv3d = _casting(disable_weight_init.Conv3d)
    ConvTranspose1d = _casting(disable_weight_init.ConvTranspose1d)
    ConvTranspose2d = _casting(disable_weight_init.ConvTranspose2d)
    GroupNorm = _casting(disable_weight_init.GroupNorm)
    LayerNorm = _casting(disable_weight_init.LayerNorm)
    Embedding = _casting(disable_weight_init.Embedding)


for _space in (disable_weight_init,):
    for _name in ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d"):
        _cls = getattr(_space, _name)
        _cls.__name__, _cls.__qualname__, _cls.__module__ = _name, f"disable_weight_init.{_name}", __name__


def pick_operations(weight_dtype, compute_dtype, load_device=None, disable_fast_fp8: bool = False,
                    fp8_optimizations: bool = False, scaled_fp8=None):
    """``disable_weight_init`` when the weights are stored in the compute dtype (or it is not
    given), else ``manual_cast``. The scaled-fp8 and fp8-matmul sets are not provided."""
    if scaled_fp8 is not None:
        raise runtime.missing(__name__, "scaled_fp8_ops")
    if fp8_optimizations and not disable_fast_fp8:
        device = torch.device(load_device) if load_device is not None else torch.device("cpu")
        if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9):  # fp8 matmuls run
            raise runtime.missing(__name__, "fp8_ops")
    if compute_dtype is None or weight_dtype == compute_dtype:
        return disable_weight_init
    return manual_cast
