"""Mask nodes with ComfyUI's names and inputs. MASK is a float tensor [B, H, W] in 0..1."""

from __future__ import annotations

from typing import Annotated

import torch

from ..graph import IMAGE, MASK, Combo, Float, Int, node
from .image import MAX_RESOLUTION

Tensor = torch.Tensor
CHANNELS = ("red", "green", "blue", "alpha")


@node(category="mask", display_name="SolidMask", outputs=["MASK"])
def SolidMask(
    value: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
    width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """A mask of one value."""
    return torch.full((1, height, width), value, dtype=torch.float32)


@node(category="mask", display_name="InvertMask", outputs=["MASK"])
def InvertMask(mask: Annotated[Tensor, MASK]) -> Tensor:
    """1 - mask."""
    return 1.0 - mask


@node(category="mask", display_name="Convert Mask to Image", outputs=["IMAGE"])
def MaskToImage(mask: Annotated[Tensor, MASK]) -> Tensor:
    """A grey image of the mask."""
    m = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    return m[..., None].expand(*m.shape, 3).clone()


@node(category="mask", display_name="Convert Image to Mask", outputs=["MASK"])
def ImageToMask(image: Annotated[Tensor, IMAGE],
                channel: Annotated[str, Combo(CHANNELS, default="red")]) -> Tensor:
    """One channel of an image as a mask (an absent alpha channel gives zeros)."""
    index = CHANNELS.index(channel)
    if index >= image.shape[-1]:
        return torch.zeros(image.shape[:-1], dtype=image.dtype)
    return image[..., index].clone()


@node(category="mask", display_name="FeatherMask", outputs=["MASK"])
def FeatherMask(
    mask: Annotated[Tensor, MASK],
    left: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    top: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    right: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    bottom: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """Fades the mask linearly to 0 over the given number of pixels at each edge."""
    out = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).clone()
    h, w = out.shape[-2:]
    left, right, top, bottom = min(left, w), min(right, w), min(top, h), min(bottom, h)

    def ramp(n: int) -> Tensor:  # weights 1/n, 2/n, ... n/n from the edge inwards
        return torch.arange(1, n + 1, dtype=out.dtype) / n

    if left:
        out[:, :, :left] *= ramp(left)
    if right:
        out[:, :, w - right:] *= ramp(right).flip(0)
    if top:
        out[:, :top, :] *= ramp(top)[:, None]
    if bottom:
        out[:, h - bottom:, :] *= ramp(bottom).flip(0)[:, None]
    return out
