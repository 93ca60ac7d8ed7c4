"""ComfyUI's ``comfy.ldm.modules.attention`` functions that attention patches call
(IPAdapter's ``optimized_attention(q, k, v, heads)``): the UNet's own attention
(models/unet.py), so a patch that calls them gives what the unpatched UNet gives. The module's
network classes (CrossAttention, SpatialTransformer, ...) are ComfyUI's and not provided."""

from __future__ import annotations

import functools

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.models.unet import attention as _attention

__all__ = ["attention_basic", "attention_pytorch", "optimized_attention", "optimized_attention_masked", "wrap_attn"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def wrap_attn(func):
    """ComfyUI's decorator for attention functions: when the call's ``transformer_options``
    hold ``optimized_attention_override``, that function is called instead, given ``func``
    (once: a call already inside the override runs ``func`` itself). Packs decorate their own
    attention with it; latentgraph's UNet does not read the override."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if "_inside_attn_wrapper" in kwargs:
            return func(*args, **kwargs)
        kwargs["_inside_attn_wrapper"] = True
        options = kwargs.get("transformer_options")
        if options is not None and "optimized_attention_override" in options:
            return options["optimized_attention_override"](func, *args, **kwargs)
        return func(*args, **kwargs)
    return wrapper


def _mask_for_heads(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A mask of (T, S) or (B, T, S) given the batch and heads axes attention broadcasts over."""
    if mask is None:
        return None
    while mask.ndim < 4:
        mask = mask.unsqueeze(0 if mask.ndim == 2 else 1)
    return mask


def attention_pytorch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask=None, attn_precision=None,
                      skip_reshape: bool = False, skip_output_reshape: bool = False, **kwargs) -> torch.Tensor:
    """Attention of q (B, T, heads*dim) over k, v (B, S, heads*dim) -> (B, T, heads*dim);
    ``skip_reshape``: q, k, v are already (B, heads, T, dim); ``skip_output_reshape``: the
    result stays (B, heads, T, dim). ``attn_precision`` is ignored (sdpa keeps its dtype)."""
    mask = _mask_for_heads(mask)
    if not skip_reshape and not skip_output_reshape:
        return _attention(q, k, v, heads, mask)
    if not skip_reshape:
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, dim)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


attention_basic = attention_pytorch  # the same numbers up to rounding; one implementation here
optimized_attention = attention_pytorch
optimized_attention_masked = attention_pytorch
