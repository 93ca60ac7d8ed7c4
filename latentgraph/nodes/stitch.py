"""ImageStitch: two images side by side or one above the other, with ComfyUI's rules: batches
evened out by repeating the last image, image2 resized (Lanczos) to image1's height or width, or
else the smaller one padded (centred) with the spacing colour; missing channels filled with 1
(opaque alpha); an optional band of spacing_width pixels (made even) between them."""

from __future__ import annotations

from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import IMAGE, Boolean, Combo, Int, node
from .budget import check_tensor
from .image import check_resize, resize

Tensor = lazy("torch", "Tensor")
DIRECTIONS = ("right", "down", "left", "up")
COLOURS = {"white": 1.0, "black": 0.0, "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def _even_batches(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """The shorter batch is filled up with copies of its last image."""
    n = max(a.shape[0], b.shape[0])
    fill = [t if t.shape[0] == n else torch.cat([t, t[-1:].repeat(n - t.shape[0], 1, 1, 1)]) for t in (a, b)]
    return fill[0], fill[1]


def _pad_across(image: Tensor, size: int, horizontal: bool, value: float) -> Tensor:
    """Centre ``image`` in ``size`` rows (horizontal stitch) or columns, padding with ``value``."""
    have = image.shape[1] if horizontal else image.shape[2]
    if have >= size:
        return image
    before, after = (size - have) // 2, size - have - (size - have) // 2
    pad = (0, 0, 0, 0, before, after) if horizontal else (0, 0, before, after)
    return F.pad(image, pad, mode="constant", value=value)


def _spacing(batch: int, along: int, width: int, channels: int, horizontal: bool, colour) -> Tensor:
    """The band between the images: ``width`` pixels across, ``along`` pixels long."""
    shape = (batch, along, width, channels) if horizontal else (batch, width, along, channels)
    band = torch.zeros(shape)
    rgb = colour if isinstance(colour, tuple) else (colour,) * 3
    for i, v in enumerate(rgb[:channels]):
        band[..., i] = v
    if channels == 4:
        band[..., 3] = 1.0
    return band


@node(category="image/transform", display_name="Image Stitch", outputs=["IMAGE"],
      python_module="comfy_extras.nodes_images")
def ImageStitch(
    image1: Annotated[Tensor, IMAGE],
    direction: Annotated[str, Combo(DIRECTIONS, default="right")],
    match_image_size: Annotated[bool, Boolean(True)],
    spacing_width: Annotated[int, Int(0, min=0, max=1024, step=2)],
    spacing_color: Annotated[str, Combo(tuple(COLOURS), default="white")],
    image2: Annotated[Tensor | None, IMAGE(optional=True)] = None,
) -> Tensor:
    """Stitches image2 to image1 in the given direction (image1 unchanged without image2)."""
    if image2 is None:
        return image1
    horizontal = direction in ("left", "right")
    image1, image2 = _even_batches(image1, image2)
    h1, w1 = image1.shape[1:3]
    h2, w2 = image2.shape[1:3]
    colour = COLOURS[spacing_color]
    if match_image_size:
        w, h = (int(h1 * (w2 / h2)), h1) if horizontal else (w1, int(w1 / (w2 / h2)))
        if w < 1 or h < 1:
            raise ValueError(f"ImageStitch: image2 of {w2} x {h2} matched to image1 of {w1} x {h1} would be "
                             f"{w} x {h} pixels")
        check_resize(image2, w, h, f"match_image_size (image2 to {w} x {h})")
        image2 = resize(image2, w, h, "lanczos")
    else:
        value = 0.0 if isinstance(colour, tuple) else colour  # a coloured pad is black, as in ComfyUI
        size = max(h1, h2) if horizontal else max(w1, w2)
        image1, image2 = (_pad_across(t, size, horizontal, value) for t in (image1, image2))
    channels = max(image1.shape[-1], image2.shape[-1])
    image1, image2 = (torch.cat([t, torch.ones(*t.shape[:-1], channels - t.shape[-1])], dim=-1)
                      if t.shape[-1] < channels else t for t in (image1, image2))
    parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
    along = max(image1.shape[1], image2.shape[1]) if horizontal else max(image1.shape[2], image2.shape[2])
    width = spacing_width + spacing_width % 2
    across = sum(t.shape[2 if horizontal else 1] for t in parts) + width
    check_tensor((image1.shape[0], along, across, channels) if horizontal else (image1.shape[0], across, along, channels),
                 f"ImageStitch of {image1.shape[0]} images", "an image")
    if width:
        parts.insert(1, _spacing(image1.shape[0], along, width, channels, horizontal, colour).to(image1))
    return torch.cat(parts, dim=2 if horizontal else 1)
