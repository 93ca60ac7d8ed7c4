"""Mask nodes with ComfyUI's names and inputs. MASK is a float tensor [B, H, W] in 0..1."""

from __future__ import annotations

from typing import Annotated

from ..graph.lazy import lazy
np = lazy("numpy")
torch = lazy("torch")
F = lazy("torch.nn.functional")
from PIL import Image, ImageOps, UnidentifiedImageError

from ..graph import IMAGE, MASK, Boolean, Combo, Float, Int, NodeContext, node
from .budget import FrameBudget, check_tensor, pillow_guard
from .image import MAX_RESOLUTION, _image_path, _load_image_fingerprint, _load_image_validate

Tensor = lazy("torch", "Tensor")
CHANNELS = ("red", "green", "blue", "alpha")


@node(category="mask", display_name="SolidMask", outputs=["MASK"])
def SolidMask(
    value: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
    width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """A mask of one value."""
    check_tensor((1, height, width), f"width {width} x height {height}", "a mask")
    return torch.full((1, height, width), value, dtype=torch.float32)


@node(category="mask", display_name="InvertMask", outputs=["MASK"])
def InvertMask(mask: Annotated[Tensor, MASK]) -> Tensor:
    """1 - mask."""
    return 1.0 - mask


@node(category="mask", display_name="Convert Mask to Image", outputs=["IMAGE"])
def MaskToImage(mask: Annotated[Tensor, MASK]) -> Tensor:
    """A grey image of the mask."""
    m = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    check_tensor((*m.shape, 3), f"a mask batch of {m.shape[0]} of {m.shape[2]} x {m.shape[1]}", "an image")
    return m[..., None].expand(*m.shape, 3).clone()


@node(category="mask", display_name="Convert Image to Mask", outputs=["MASK"])
def ImageToMask(image: Annotated[Tensor, IMAGE],
                channel: Annotated[str, Combo(CHANNELS, default="red")]) -> Tensor:
    """One channel of an image as a mask (an absent alpha channel gives zeros)."""
    index = CHANNELS.index(channel)
    if index >= image.shape[-1]:
        return torch.zeros(image.shape[:-1], dtype=image.dtype)
    return image[..., index].clone()


def _edge_factors(size: int, n: int, from_end: bool) -> Tensor:
    """The factor FeatherMask gives each row (or column) for an n-pixel fade at one edge:
    (k+1)/n for the k-th one from that edge, 1 elsewhere.

    ComfyUI walks the far edge as index -k for k = 0..n-1, and index -0 is the *first* row or
    column: so there the first one takes 1/n and the far edge starts at 2/n. We keep that, so
    that masks are identical to ComfyUI's."""
    factors = torch.ones(size, dtype=torch.float64)
    k = torch.arange(n)
    factors[(-k) % size if from_end else k] = (k + 1).double() / n
    return factors


# version 2: the right and bottom fades as ComfyUI computes them
@node(category="mask", display_name="FeatherMask", outputs=["MASK"], version=2)
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
    # Applied one side after another (float32 factors, exact 1 where a side does not reach),
    # the same sequence of products as ComfyUI's loops.
    for n, size, from_end, rows in ((left, w, False, False), (right, w, True, False),
                                    (top, h, False, True), (bottom, h, True, True)):
        n = min(n, size)
        if n:
            f = _edge_factors(size, n, from_end).to(out.dtype)
            out *= f[:, None] if rows else f
    return out


def _dilate(m: Tensor, square: bool) -> Tensor:
    """One greyscale dilation of (B, 1, H, W) by a 3x3 square or plus-shaped footprint; pixels
    outside the mask are ignored (scipy's reflect border gives the same for a 3x3 window)."""
    if square:
        return F.max_pool2d(m, 3, stride=1, padding=1)
    across = F.max_pool2d(m, (1, 3), stride=1, padding=(0, 1))
    down = F.max_pool2d(m, (3, 1), stride=1, padding=(1, 0))
    return torch.maximum(across, down)


@node(category="mask", display_name="GrowMask", outputs=["MASK"])
def GrowMask(
    mask: Annotated[Tensor, MASK],
    expand: Annotated[int, Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)],
    tapered_corners: Annotated[bool, Boolean(True)],
) -> Tensor:
    """Grows (expand > 0) or shrinks (expand < 0) the mask by |expand| pixels.

    One 3x3 greyscale dilation or erosion per pixel, with a plus-shaped footprint when the
    corners are tapered (as ComfyUI's scipy grey_dilation / grey_erosion)."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    sign = -1.0 if expand < 0 else 1.0  # erosion is dilation of the negated mask
    m = m * sign
    # After h + w steps every pixel has seen the whole mask; more steps change nothing.
    for _ in range(min(abs(expand), m.shape[-2] + m.shape[-1])):
        m = _dilate(m, square=not tapered_corners)
    return (m * sign)[:, 0]


@node(category="mask", display_name="Load Image (as Mask)", outputs=["MASK"],
      fingerprint=_load_image_fingerprint, validate=_load_image_validate)
def LoadImageMask(
    image: Annotated[str, Combo(lambda env: env.list_inputs() if env else [], image_upload=True)],
    channel: Annotated[str, Combo(("alpha", "red", "green", "blue"), default="alpha")],
    ctx: NodeContext,
) -> Tensor:
    """Loads one channel of an image from the input folder as a mask.

    The mask is [1, H, W] from the first frame. Alpha is inverted (1 - alpha), so transparent
    pixels are 1; an image without alpha is read as opaque (ComfyUI converts it to RGBA), so
    its alpha mask is all 0."""
    path = _image_path(image, ctx.env)
    try:
        with pillow_guard(image), Image.open(path) as img:
            FrameBudget(image).frame(img.size)  # only the first frame is decoded
            img = ImageOps.exif_transpose(img)
            if img.getbands() != ("R", "G", "B", "A"):
                if img.mode == "I":  # 32-bit integer pixels: scaled to 8 bits as LoadImage does
                    img = img.point(lambda v: v * (1 / 255))
                img = img.convert("RGBA")
            band = np.asarray(img.getchannel(channel[0].upper()), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {image!r}: {exc}") from exc
    m = torch.from_numpy(band)
    return (1.0 - m if channel == "alpha" else m)[None]
