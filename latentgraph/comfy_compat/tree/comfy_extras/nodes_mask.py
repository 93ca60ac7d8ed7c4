"""ComfyUI's ``comfy_extras.nodes_mask``: its node classes are latentgraph's (made on access,
as for every ``comfy_extras.nodes_*`` module), plus ``composite``, the channels-first paste
that packs (KJNodes, Impact) call on latents and images."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from latentgraph.comfy_compat import extras_node

from comfy.utils import repeat_to_batch_size  # the tree's own module

__getattr__ = functools.partial(extras_node, __name__)


def composite(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, mask: torch.Tensor | None = None,
              multiplier: int = 8, resize_source: bool = False) -> torch.Tensor:
    """Paste ``source`` into ``destination`` (both [B, C, H, W]) at (x, y), given in units of
    ``1/multiplier`` of a row (8: a latent placed in pixels; 1: an image), through ``mask``
    (1 = source). As in ComfyUI, ``destination`` itself is changed and returned."""
    src = source.to(destination.device)
    dh, dw = destination.shape[-2:]
    if resize_source:
        src = F.interpolate(src, size=(dh, dw), mode="bilinear")
    src = repeat_to_batch_size(src, destination.shape[0])
    sh, sw = src.shape[-2:]
    # the offset may push the source at most wholly outside, on either side
    x = min(max(x, -sw * multiplier), dw * multiplier)
    y = min(max(y, -sh * multiplier), dh * multiplier)
    left, top = x // multiplier, y // multiplier
    if mask is None:
        weight = torch.ones_like(src)
    else:
        weight = mask.to(destination.device, copy=True).reshape(-1, 1, *mask.shape[-2:])
        weight = repeat_to_batch_size(F.interpolate(weight, size=(sh, sw), mode="bilinear"), src.shape[0])
    seen_h, seen_w = dh - top + min(0, y), dw - left + min(0, x)  # the part of the source inside
    weight = weight[:, :, :seen_h, :seen_w]
    if weight.ndim < src.ndim:
        weight = weight.unsqueeze(1)
    region = destination[..., top:top + sh, left:left + sw]
    destination[..., top:top + sh, left:left + sw] = weight * src[..., :seen_h, :seen_w] + (1 - weight) * region
    return destination
