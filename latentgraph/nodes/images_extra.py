"""Everyday image and mask nodes of ComfyUI core (issue 16): batching, crop, flip, rotate,
sharpen, scale to a largest side; mask threshold, crop, composite, colour to mask, and
splitting/joining an alpha channel. ComfyUI 0.3.64's names, inputs, defaults and numerics.

IMAGE is [B, H, W, C] in 0..1, MASK [B, H, W]. Sizes that come from inputs are checked against
tensor_bytes before the tensor is made."""

from __future__ import annotations

import math
from typing import Annotated

from ..graph.lazy import lazy
np = lazy("numpy")
torch = lazy("torch")
F = lazy("torch.nn.functional")
from PIL import Image

from ..graph import IMAGE, MASK, Combo, Float, Int, node
from .budget import check_tensor
from .image import MAX_RESOLUTION, check_resize, gaussian_kernel, resize

Tensor = lazy("torch", "Tensor")
_IMAGES = "comfy_extras.nodes_images"
_MASKS = "comfy_extras.nodes_mask"
_COMPOSITING = "comfy_extras.nodes_compositing"
FLIPS = ("x-axis: vertically", "y-axis: horizontally")
ROTATIONS = ("none", "90 degrees", "180 degrees", "270 degrees")


@node(category="image", display_name="Batch Images", outputs=["IMAGE"])
def ImageBatch(image1: Annotated[Tensor, IMAGE], image2: Annotated[Tensor, IMAGE]) -> Tensor:
    """image2's images after image1's; image2 of another size is resized to image1's (bilinear,
    centre-cropped to the aspect)."""
    b1, h, w, c = image1.shape
    if image2.shape[-1] != c:
        raise ValueError(f"ImageBatch: image1 has {c} channels and image2 {image2.shape[-1]}: they must match")
    check_tensor((b1 + image2.shape[0], h, w, c), f"ImageBatch of {b1} + {image2.shape[0]} images", "an image")
    if image2.shape[1:] != image1.shape[1:]:
        image2 = resize(image2, w, h, "bilinear", "center")
    return torch.cat((image1, image2.to(image1)), dim=0)


@node(category="image/transform", display_name="Image Crop", outputs=["IMAGE"], python_module=_IMAGES)
def ImageCrop(
    image: Annotated[Tensor, IMAGE],
    width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """Cuts width x height pixels at (x, y); a corner past the image moves in to its last pixel,
    and the crop is cut at the image's edges."""
    x = min(x, image.shape[2] - 1)
    y = min(y, image.shape[1] - 1)
    return image[:, y:y + height, x:x + width, :]


@node(category="image/transform", display_name="ImageFlip", outputs=["IMAGE"], python_module=_IMAGES)
def ImageFlip(image: Annotated[Tensor, IMAGE], flip_method: Annotated[str, Combo(FLIPS)]) -> Tensor:
    """Mirrors the image: x-axis flips top and bottom, y-axis left and right."""
    return torch.flip(image, dims=[1 if flip_method.startswith("x") else 2])


@node(category="image/transform", display_name="ImageRotate", outputs=["IMAGE"], python_module=_IMAGES)
def ImageRotate(image: Annotated[Tensor, IMAGE], rotation: Annotated[str, Combo(ROTATIONS)]) -> Tensor:
    """Rotates the image clockwise by quarter turns."""
    quarters = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
    return torch.rot90(image, k=quarters, dims=[2, 1])


@node(category="image/batch", display_name="RepeatImageBatch", outputs=["IMAGE"], python_module=_IMAGES)
def RepeatImageBatch(image: Annotated[Tensor, IMAGE],
                     amount: Annotated[int, Int(1, min=1, max=4096)]) -> Tensor:
    """The whole batch ``amount`` times over."""
    check_tensor((amount * image.shape[0], *image.shape[1:]), f"amount {amount} x a batch of {image.shape[0]}",
                 "an image")
    return image.repeat((amount, 1, 1, 1))


@node(category="image/batch", display_name="ImageFromBatch", outputs=["IMAGE"], python_module=_IMAGES)
def ImageFromBatch(
    image: Annotated[Tensor, IMAGE],
    batch_index: Annotated[int, Int(0, min=0, max=4095)],
    length: Annotated[int, Int(1, min=1, max=4096)],
) -> Tensor:
    """``length`` images from ``batch_index`` on; both are clamped to the batch."""
    start = min(image.shape[0] - 1, batch_index)
    length = min(image.shape[0] - start, length)
    return image[start:start + length].clone()


def sharpen_kernel(radius: int, sigma: float, alpha: float) -> Tensor:
    """ComfyUI's sharpening kernel (K, K), K = 2 * radius + 1: a Gaussian sampled on [-1, 1]
    (not on pixel offsets), scaled by -10 * alpha, with the centre raised so the kernel sums to 1."""
    kernel = gaussian_kernel(radius, sigma) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    return kernel


@node(category="image/postprocessing", outputs=["IMAGE"], python_module="comfy_extras.nodes_post_processing")
def ImageSharpen(
    image: Annotated[Tensor, IMAGE],
    sharpen_radius: Annotated[int, Int(1, min=1, max=31, step=1)],
    sigma: Annotated[float, Float(1.0, min=0.1, max=10.0, step=0.01)],
    alpha: Annotated[float, Float(1.0, min=0.0, max=5.0, step=0.01)],
) -> Tensor:
    """Unsharp-style sharpening over reflected edges, clamped to 0..1.

    An image no bigger than the radius cannot be reflected (ComfyUI fails there); its edges are
    repeated instead."""
    _, h, w, c = image.shape
    kernel = sharpen_kernel(sharpen_radius, sigma, alpha).to(image)
    mode = "reflect" if sharpen_radius < min(h, w) else "replicate"
    x = F.pad(image.movedim(-1, 1), (sharpen_radius,) * 4, mode=mode)
    x = F.conv2d(x, kernel.expand(c, 1, *kernel.shape), groups=c)
    return x.movedim(1, -1).clamp(0, 1)


@node(category="image/upscaling", display_name="ImageScaleToMaxDimension", outputs=["IMAGE"], python_module=_IMAGES)
def ImageScaleToMaxDimension(
    image: Annotated[Tensor, IMAGE],
    upscale_method: Annotated[str, Combo(("area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"))],
    largest_size: Annotated[int, Int(512, min=0, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """Resizes so that the longer side is ``largest_size`` (the other keeps the aspect, rounded)."""
    h, w = image.shape[1:3]
    if h > w:
        w, h = round(w / h * largest_size), largest_size
    elif w > h:
        w, h = largest_size, round(h / w * largest_size)
    else:
        w = h = largest_size
    if w == 0 or h == 0:
        raise ValueError(f"ImageScaleToMaxDimension: largest_size {largest_size} makes an image of {w} x {h} "
                         f"pixels; it must be at least 1 x 1")
    check_resize(image, w, h, f"largest_size {largest_size}")
    return resize(image, w, h, upscale_method)


@node(category="mask", display_name="ThresholdMask", outputs=["MASK"], python_module=_MASKS)
def ThresholdMask(mask: Annotated[Tensor, MASK],
                  value: Annotated[float, Float(0.5, min=0.0, max=1.0, step=0.01)]) -> Tensor:
    """1 where the mask is above ``value``, else 0."""
    return (mask > value).float()


@node(category="mask", display_name="CropMask", outputs=["MASK"], python_module=_MASKS)
def CropMask(
    mask: Annotated[Tensor, MASK],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
) -> Tensor:
    """Cuts width x height at (x, y), cut at the mask's edges (a crop wholly outside is empty)."""
    mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1])
    return mask[:, y:y + height, x:x + width]


_MASK_OPS = {
    "multiply": lambda d, s: d * s,
    "add": lambda d, s: d + s,
    "subtract": lambda d, s: d - s,
    # the logical ones round each value to 0 or 1 first
    "and": lambda d, s: (d.round().bool() & s.round().bool()).float(),
    "or": lambda d, s: (d.round().bool() | s.round().bool()).float(),
    "xor": lambda d, s: (d.round().bool() ^ s.round().bool()).float(),
}


@node(category="mask", display_name="MaskComposite", outputs=["MASK"], python_module=_MASKS)
def MaskComposite(
    destination: Annotated[Tensor, MASK],
    source: Annotated[Tensor, MASK],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    operation: Annotated[str, Combo(tuple(_MASK_OPS))],
) -> Tensor:
    """Combines source into destination at (x, y) where they overlap; the result is clamped to
    0..1 everywhere. A source placed wholly outside changes nothing but the clamp."""
    out = destination.reshape(-1, destination.shape[-2], destination.shape[-1]).clone()
    source = source.reshape(-1, source.shape[-2], source.shape[-1])
    if source.shape[0] not in (1, out.shape[0]) and out.shape[0] != 1:
        raise ValueError(f"MaskComposite: a source batch of {source.shape[0]} and a destination batch of "
                         f"{out.shape[0]}: they must match, or one must be 1")
    if out.shape[0] == 1 and source.shape[0] > 1:  # the destination is broadcast over the source's batch
        check_tensor((source.shape[0], *out.shape[1:]), f"MaskComposite over a source batch of {source.shape[0]}",
                     "a mask")
        out = out.expand(source.shape[0], -1, -1).clone()
    h, w = out.shape[-2:]
    bottom, right = min(y + source.shape[-2], h), min(x + source.shape[-1], w)
    if bottom > y and right > x:
        region = out[:, y:bottom, x:right]
        out[:, y:bottom, x:right] = _MASK_OPS[operation](region, source[:, :bottom - y, :right - x])
    return out.clamp(0.0, 1.0)


@node(category="mask", display_name="ImageColorToMask", outputs=["MASK"], python_module=_MASKS)
def ImageColorToMask(image: Annotated[Tensor, IMAGE],
                     color: Annotated[int, Int(0, min=0, max=0xFFFFFF, step=1, display="color")]) -> Tensor:
    """1 where the pixel's 8-bit colour (rounded) is exactly ``color`` (0xRRGGBB), else 0."""
    rgb = (image.clamp(0, 1.0) * 255.0).round().to(torch.int64)
    packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]
    return (packed == color).float()


@node(category="mask/compositing", display_name="Split Image with Alpha", outputs=["IMAGE", "MASK"],
      python_module=_COMPOSITING)
def SplitImageWithAlpha(image: Annotated[Tensor, IMAGE]) -> tuple[Tensor, Tensor]:
    """The RGB channels, and the mask 1 - alpha (all 0 for an image without alpha)."""
    alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])
    return image[..., :3].clone(), 1.0 - alpha


@node(category="mask/compositing", display_name="Join Image with Alpha", outputs=["IMAGE"],
      python_module=_COMPOSITING)
def JoinImageWithAlpha(image: Annotated[Tensor, IMAGE], alpha: Annotated[Tensor, MASK]) -> Tensor:
    """RGBA from the RGB channels and alpha = 1 - mask (resized bilinearly to the image); the
    batch is the shorter of the two."""
    b, h, w = min(image.shape[0], alpha.reshape(-1, *alpha.shape[-2:]).shape[0]), image.shape[1], image.shape[2]
    check_tensor((b, h, w, 4), f"JoinImageWithAlpha of {b} images of {w} x {h}", "an image")
    mask = alpha.reshape(-1, 1, alpha.shape[-2], alpha.shape[-1]).to(image)
    mask = F.interpolate(mask, size=(h, w), mode="bilinear")[:b, 0]
    return torch.cat((image[:b, ..., :3], (1.0 - mask)[..., None]), dim=-1)


MORPHOLOGY = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")


@node(category="image/postprocessing", display_name="ImageMorphology", outputs=["IMAGE"],
      python_module="comfy_extras.nodes_morphology")
def Morphology(image: Annotated[Tensor, IMAGE], operation: Annotated[str, Combo(MORPHOLOGY)],
               kernel_size: Annotated[int, Int(3, min=3, max=999, step=1)]) -> Tensor:
    """Grey-scale morphology with a kernel_size square of ones (kornia.morphology, as ComfyUI)."""
    from kornia import morphology  # imported here: kornia is slow to import and few graphs need it

    b, h, w, c = image.shape
    # kornia unfolds every pixel's kernel_size^2 neighbourhood at once
    check_tensor((b, c, h, w, kernel_size * kernel_size), f"Morphology with kernel_size {kernel_size} on {b} "
                 f"images of {w} x {h}", "a neighbourhood tensor")
    ops = {"erode": morphology.erosion, "dilate": morphology.dilation, "open": morphology.opening,
           "close": morphology.closing, "gradient": morphology.gradient, "top_hat": morphology.top_hat,
           "bottom_hat": morphology.bottom_hat}
    kernel = torch.ones(kernel_size, kernel_size, dtype=image.dtype)
    return ops[operation](image.movedim(-1, 1), kernel).movedim(1, -1)


DITHERS = ("none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16")


def bayer_matrix(level: int) -> np.ndarray:
    """The ordered-dither threshold matrix (2^level square) ComfyUI uses, centred on 0 and
    normalised to about -0.5..0.5: each level tiles the previous, scaled by 4, into four
    quadrants offset by -1.5, +0.5, +1.5, -0.5."""
    m = np.zeros((1, 1), np.float32)
    for n in range(1, level + 1):
        q = 4 ** n
        big = q * m
        m = np.block([[big - 1.5, big + 0.5], [big + 1.5, big - 0.5]]) / q
    return m


def _quantize_one(im: Image.Image, colors: int, dither: str) -> Image.Image:
    """One 8-bit RGB image reduced to a palette of ``colors`` (Pillow's median cut), then mapped
    to it with no dither, Floyd-Steinberg, or an ordered (Bayer) threshold added first."""
    palette = im.quantize(colors=colors)  # Pillow maps with dither only through a palette image
    if dither == "floyd-steinberg":
        return im.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    if dither.startswith("bayer"):
        spread = 2 * 256 / (len(palette.getpalette()) // 3)
        threshold = spread * bayer_matrix(int(math.log2(int(dither.split("-")[1])))) + 0.5
        arr = np.asarray(im).astype(np.float32)
        h, w = arr.shape[:2]
        reps = (-(-h // threshold.shape[0]), -(-w // threshold.shape[1]))
        arr = np.clip(arr + np.tile(threshold, reps)[:h, :w, None], 0, 255).astype(np.uint8)
        im = Image.fromarray(arr)
    return im.quantize(palette=palette, dither=Image.Dither.NONE)


@node(category="image/postprocessing", outputs=["IMAGE"], python_module="comfy_extras.nodes_post_processing")
def ImageQuantize(image: Annotated[Tensor, IMAGE], colors: Annotated[int, Int(256, min=1, max=256, step=1)],
                  dither: Annotated[str, Combo(DITHERS)]) -> Tensor:
    """Reduces each image to at most ``colors`` colours (8-bit, values truncated as ComfyUI)."""
    out = torch.zeros_like(image[..., :3])
    for i, frame in enumerate(image[..., :3]):
        im = Image.fromarray((frame.clamp(0, 1) * 255).to(torch.uint8).numpy(), mode="RGB")
        out[i] = torch.from_numpy(np.asarray(_quantize_one(im, colors, dither).convert("RGB")).astype(np.float32)) / 255
    return out
