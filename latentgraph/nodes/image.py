"""Image nodes with ComfyUI's names, inputs and defaults: load, save, preview, make, scale,
invert, blend, blur, composite, pad. IMAGE is a float tensor [B, H, W, C] in 0..1."""

from __future__ import annotations

import math
import secrets
from typing import Annotated

from ..graph.lazy import lazy
np = lazy("numpy")
torch = lazy("torch")
F = lazy("torch.nn.functional")
from PIL import Image, UnidentifiedImageError

from ..graph import IMAGE, MASK, Boolean, Combo, Float, Hidden, Int, NodeContext, Result, String, file_identity, node
from .budget import check_tensor, pillow_guard
crop_to_aspect = lazy("..models.latent", "crop_to_aspect")
from .imageio import pil_to_tensors, save_images, tensor_to_pil

MAX_RESOLUTION = 16384
Tensor = lazy("torch", "Tensor")


def _image_path(image: str, env):
    return env.annotated_path(image)


def _load_image_fingerprint(image: str, env):
    path = _image_path(image, env)
    return file_identity(path, content_hash=True) if path is not None else ("invalid", image)


def _load_image_validate(image: str, env):
    path = _image_path(image, env)
    if path is None or not path.is_file():
        return f"Invalid image file: {image} (looked in {env.input_dir})"
    return None


@node(category="image", display_name="Load Image", outputs=["IMAGE", "MASK"],
      fingerprint=_load_image_fingerprint, validate=_load_image_validate)
def LoadImage(image: Annotated[str, Combo(lambda env: env.list_inputs() if env else [], image_upload=True)],
              ctx: NodeContext) -> tuple:
    """Loads an image from the input folder; the mask is its inverted alpha channel."""
    path = _image_path(image, ctx.env)
    try:
        with pillow_guard(image), Image.open(path) as img:
            return pil_to_tensors(img, image)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {image!r}: {exc}") from exc


@node(category="image", display_name="Save Image", output_node=True)
def SaveImage(
    images: Annotated[Tensor, IMAGE(tooltip="The images to save.")],
    filename_prefix: Annotated[str, String("latentgraph", tooltip="File name prefix; may include a subfolder.")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves images as PNG files in the output folder, with the workflow in their metadata."""
    saved = save_images(images, ctx.env.output_dir, filename_prefix, "output", 4, prompt, extra_pnginfo)
    return Result(ui={"images": saved})


@node(category="image", display_name="Preview Image", output_node=True)
def PreviewImage(images: Annotated[Tensor, IMAGE],
                 prompt: Annotated[dict, Hidden("PROMPT")],
                 extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
                 ctx: NodeContext) -> Result:
    """Saves images to the temp folder for viewing."""
    prefix = "latentgraph_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    saved = save_images(images, ctx.env.temp_dir, prefix, "temp", 1, prompt, extra_pnginfo)
    return Result(ui={"images": saved})


@node(category="image", display_name="EmptyImage", outputs=["IMAGE"])
def EmptyImage(
    width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    batch_size: Annotated[int, Int(1, min=1, max=4096)],
    color: Annotated[int, Int(0, min=0, max=0xFFFFFF, step=1, display="color")],
) -> Tensor:
    """An image of one colour, given as 0xRRGGBB."""
    check_tensor((batch_size, height, width, 3), f"width {width} x height {height} x batch_size {batch_size}",
                 "an image")
    rgb = torch.tensor([(color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF], dtype=torch.float32) / 255.0
    return rgb.expand(batch_size, height, width, 3).clone()


@node(category="image", display_name="Invert Image", outputs=["IMAGE"])
def ImageInvert(image: Annotated[Tensor, IMAGE]) -> Tensor:
    """Inverts the colours of an image."""
    return 1.0 - image


UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROP_METHODS = ("disabled", "center")
_INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear", "area", "bicubic")


def _lanczos(samples: Tensor, width: int, height: int) -> Tensor:
    """PIL's Lanczos filter, image by image, on 8-bit pixels (ComfyUI quantises the same way)."""
    frames = []
    for im in samples:  # (C, H, W)
        small = tensor_to_pil(im.movedim(0, -1)).resize((width, height), Image.LANCZOS)
        arr = torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0)
        frames.append(arr[None] if arr.ndim == 2 else arr.movedim(-1, 0))
    return torch.stack(frames).to(samples.device, samples.dtype)


def upscale(samples: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize channel-first samples (B, C, H, W) to width x height as ComfyUI's common_upscale:
    torch's interpolate with align_corners=False and no clamping (bicubic may overshoot 0..1),
    "area" is adaptive average pooling, "lanczos" goes through PIL."""
    if crop == "center":
        samples = crop_to_aspect(samples, width, height)
    if method == "lanczos":
        return _lanczos(samples, width, height)
    if method not in _INTERPOLATE_MODES:
        raise ValueError(f"unknown upscale method {method!r}; choose one of {', '.join(UPSCALE_METHODS)}")
    return F.interpolate(samples, size=(height, width), mode=method)


def check_resize(image: Tensor, width: int, height: int, what: str) -> None:
    """Refuse (tensor_bytes) to resize IMAGE [B, H, W, C] to width x height when the result
    would be too big; ``what`` says which inputs gave the size."""
    b, _, _, c = image.shape
    check_tensor((b, height, width, c), f"{what} for a batch of {b}", "an image")


def resize(image: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize IMAGE [B, H, W, C] with ``upscale``; ``crop="center"`` crops to the target aspect first."""
    return upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


# version 2: center crop and lanczos as ComfyUI's common_upscale
@node(category="image/upscaling", display_name="Upscale Image", outputs=["IMAGE"], version=2)
def ImageScale(
    image: Annotated[Tensor, IMAGE],
    upscale_method: Annotated[str, Combo(UPSCALE_METHODS, default="nearest-exact")],
    width: Annotated[int, Int(512, min=0, max=MAX_RESOLUTION, step=1)],
    height: Annotated[int, Int(512, min=0, max=MAX_RESOLUTION, step=1)],
    crop: Annotated[str, Combo(CROP_METHODS, default="disabled")],
) -> Tensor:
    """Resizes an image; a width or height of 0 keeps the aspect ratio."""
    _, h, w, _ = image.shape
    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    check_resize(image, width, height, f"width {width} x height {height}")
    return resize(image, width, height, upscale_method, crop)


@node(category="image/upscaling", display_name="Upscale Image By", outputs=["IMAGE"])
def ImageScaleBy(
    image: Annotated[Tensor, IMAGE],
    upscale_method: Annotated[str, Combo(UPSCALE_METHODS, default="nearest-exact")],
    scale_by: Annotated[float, Float(1.0, min=0.01, max=8.0, step=0.01)],
) -> Tensor:
    """Resizes an image by a factor (each side rounded to whole pixels)."""
    _, h, w, _ = image.shape
    width, height = round(w * scale_by), round(h * scale_by)
    check_resize(image, width, height, f"scale_by {scale_by} ({w} x {h} to {width} x {height})")
    return resize(image, width, height, upscale_method)


@node(category="image/upscaling", display_name="Scale Image to Total Pixels", outputs=["IMAGE"])
def ImageScaleToTotalPixels(
    image: Annotated[Tensor, IMAGE],
    upscale_method: Annotated[str, Combo(UPSCALE_METHODS, default="nearest-exact")],
    megapixels: Annotated[float, Float(1.0, min=0.01, max=16.0, step=0.01)],
) -> Tensor:
    """Resizes an image, keeping its aspect ratio, to about megapixels x 1024^2 pixels."""
    _, h, w, _ = image.shape
    total = int(megapixels * 1024 * 1024)
    scale = math.sqrt(total / (w * h))
    width, height = round(w * scale), round(h * scale)
    check_resize(image, width, height, f"megapixels {megapixels} ({w} x {h} to {width} x {height})")
    return resize(image, width, height, upscale_method)


def _soft_light(a: Tensor, b: Tensor) -> Tensor:
    g = torch.where(a <= 0.25, ((16 * a - 12) * a + 4) * a, torch.sqrt(a))
    return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (g - a))


BLEND_MODES = {
    "normal": lambda a, b: b,
    "multiply": lambda a, b: a * b,
    "screen": lambda a, b: 1 - (1 - a) * (1 - b),
    "overlay": lambda a, b: torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b)),
    "soft_light": _soft_light,
    "difference": lambda a, b: a - b,  # signed, then clamped, as ComfyUI
}


# version 2: image2 is centre-cropped as ComfyUI's common_upscale crops
@node(category="image/postprocessing", display_name="Image Blend", outputs=["IMAGE"], version=2)
def ImageBlend(
    image1: Annotated[Tensor, IMAGE],
    image2: Annotated[Tensor, IMAGE],
    blend_factor: Annotated[float, Float(0.5, min=0.0, max=1.0, step=0.01)],
    blend_mode: Annotated[str, Combo(tuple(BLEND_MODES), default="normal")],
) -> Tensor:
    """Blends image2 over image1 (resized to image1 if needed) with a blend mode."""
    if image2.shape[1:3] != image1.shape[1:3]:
        check_resize(image2, image1.shape[2], image1.shape[1], "image2 resized to image1's size")
        image2 = resize(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
    blended = BLEND_MODES[blend_mode](image1, image2)
    out = image1 * (1 - blend_factor) + blended * blend_factor
    return out.clamp(0.0, 1.0)


def gaussian_kernel(radius: int, sigma: float) -> Tensor:
    """ComfyUI's blur kernel (K, K), K = 2 * radius + 1: the Gaussian is sampled at K points
    spread over [-1, 1] whatever the radius (not at pixel offsets), so sigma is in units of the
    radius; normalised to sum 1."""
    k = 2 * radius + 1
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, k), torch.linspace(-1, 1, k), indexing="ij")
    g = torch.exp(-(xs * xs + ys * ys) / (2.0 * sigma * sigma))
    return g / g.sum()


@node(category="image/postprocessing", display_name="Image Blur", outputs=["IMAGE"])
def ImageBlur(
    image: Annotated[Tensor, IMAGE],
    blur_radius: Annotated[int, Int(1, min=1, max=31, step=1)],
    sigma: Annotated[float, Float(1.0, min=0.1, max=10.0, step=0.1)],
) -> Tensor:
    """Gaussian blur with a (2*radius+1)^2 kernel; edges are reflected."""
    _, h, w, c = image.shape
    kernel = gaussian_kernel(blur_radius, sigma).to(image)
    x = image.movedim(-1, 1)  # (B, C, H, W)
    mode = "reflect" if blur_radius < min(h, w) else "replicate"
    x = F.pad(x, (blur_radius,) * 4, mode=mode)
    weight = kernel.expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x.movedim(1, -1)


def composite(destination: Tensor, source: Tensor, x: int, y: int, mask: Tensor | None,
              resize_source: bool) -> Tensor:
    """Paste ``source`` onto ``destination`` at (x, y), weighted by ``mask`` (1 = source).
    Both IMAGE [B, H, W, C]; the part of source outside destination is dropped."""
    b, h, w, c = destination.shape
    if resize_source:
        check_resize(source, w, h, "resize_source (the destination's size)")
        source = resize(source, w, h, "bilinear")
    sh, sw = source.shape[1:3]
    # source and mask are repeated to the destination's batch, the mask resized to the source
    check_tensor((max(b, source.shape[0]), sh, sw, c), f"a source of {sw} x {sh} for a destination batch of {b}",
                 "a source batch")
    if mask is not None:
        check_tensor((max(b, mask.reshape(-1, *mask.shape[-2:]).shape[0]), sh, sw),
                     f"a mask resized to the source's {sw} x {sh} for a destination batch of {b}", "a mask")
    out = destination.clone()
    if source.shape[0] < b:
        source = source.repeat((b + source.shape[0] - 1) // source.shape[0], 1, 1, 1)[:b]
    if mask is None:
        mask = torch.ones((b, sh, sw), dtype=out.dtype)
    else:
        mask = mask.reshape(-1, mask.shape[-2], mask.shape[-1]).to(out)
        mask = F.interpolate(mask[:, None], size=(sh, sw), mode="bilinear", align_corners=False)[:, 0]
        if mask.shape[0] < b:
            mask = mask.repeat((b + mask.shape[0] - 1) // mask.shape[0], 1, 1)[:b]
    x, y = min(x, w), min(y, h)
    vw, vh = min(sw, w - x), min(sh, h - y)
    if vw <= 0 or vh <= 0:
        return out
    m = mask[:b, :vh, :vw, None]
    region = out[:, y:y + vh, x:x + vw]
    out[:, y:y + vh, x:x + vw] = source[:b, :vh, :vw].to(out) * m + region * (1 - m)
    return out


@node(category="image", display_name="Image Composite Masked", outputs=["IMAGE"])
def ImageCompositeMasked(
    destination: Annotated[Tensor, IMAGE],
    source: Annotated[Tensor, IMAGE],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=1)],
    resize_source: Annotated[bool, Boolean(False)],
    mask: Annotated[Tensor | None, MASK(optional=True)] = None,
) -> Tensor:
    """Pastes the source image into the destination at (x, y), through an optional mask."""
    return composite(destination, source, x, y, mask, resize_source)


@node(category="image", display_name="Pad Image for Outpainting", outputs=["IMAGE", "MASK"])
def ImagePadForOutpaint(
    image: Annotated[Tensor, IMAGE],
    left: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    top: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    right: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    bottom: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    feathering: Annotated[int, Int(40, min=0, max=MAX_RESOLUTION, step=1)],
) -> tuple:
    """Pads an image with grey for outpainting; the mask marks the padding.

    The mask [1, H, W] is 1 on the padding and, over the original, (1 - d/feathering)^2 within
    ``feathering`` pixels of a padded side (d the distance to it), as ComfyUI computes it; the
    fade is left out when the image is not wider and taller than 2 * feathering."""
    b, h, w, c = image.shape
    check_tensor((b, h + top + bottom, w + left + right, c),
                 f"left {left} + right {right} and top {top} + bottom {bottom} around a batch of {b} of {w} x {h}",
                 "an image")
    out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)
    out[:, top:top + h, left:left + w] = image
    mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
    inner = torch.zeros((h, w), dtype=torch.float64)
    if 0 < feathering and feathering * 2 < h and feathering * 2 < w:
        i = torch.arange(h, dtype=torch.float64)[:, None]  # (h, 1)
        j = torch.arange(w, dtype=torch.float64)[None, :]  # (1, w)
        # Distance to each padded side; a side that is not padded counts as far away.
        dist = torch.minimum(
            torch.minimum(i if top else torch.full_like(i, h), h - i if bottom else torch.full_like(i, h)),
            torch.minimum(j if left else torch.full_like(j, w), w - j if right else torch.full_like(j, w)))
        v = (feathering - dist) / feathering  # float64 like ComfyUI's Python arithmetic
        inner = torch.where(dist < feathering, v * v, inner)
    mask[top:top + h, left:left + w] = inner.float()
    return out, mask[None]
