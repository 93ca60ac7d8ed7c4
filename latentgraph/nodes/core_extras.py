"""Small ComfyUI 0.3.64 core nodes on images, latents and masks that issue 16 still lacked:
GetImageSize, ImageAddNoise, ResizeAndPadImage, LatentConcat, LatentCut, ImageRGBToYUV,
ImageYUVToRGB, MaskPreview, PorterDuffImageComposite and LoadImageOutput. Names, inputs,
defaults and numerics are ComfyUI's.

IMAGE is [B, H, W, C] in 0..1, MASK [B, H, W], a LATENT's samples [B, C, (T,) H, W]. Sizes that
come from inputs are checked against tensor_bytes before the tensor is made."""

from __future__ import annotations

import secrets
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
from PIL import Image, UnidentifiedImageError

from ..graph import (IMAGE, LATENT, MASK, Combo, Float, Hidden, Int, NodeContext, Result, file_identity,
                     node)
from ..graph.env import IMAGE_EXTENSIONS, _list_files
from .budget import check_tensor, pillow_guard
from .image import MAX_RESOLUTION, check_resize, upscale
from .imageio import pil_to_tensors, save_images

Tensor = lazy("torch", "Tensor")
_IMAGES = "comfy_extras.nodes_images"
_LATENT = "comfy_extras.nodes_latent"
_MORPHOLOGY = "comfy_extras.nodes_morphology"
RESIZE_METHODS = ("area", "bicubic", "nearest-exact", "bilinear", "lanczos")
CONCAT_DIMS = ("x", "-x", "y", "-y", "t", "-t")
PORTER_DUFF_MODES = ("ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
                     "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR")


@node(category="image", display_name="Get Image Size", python_module=_IMAGES,
      outputs=[("width", "INT"), ("height", "INT"), ("batch_size", "INT")])
def GetImageSize(image: Annotated[Tensor, IMAGE]) -> tuple:
    """The image's width, height and batch size."""
    return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])


@node(category="image", display_name="ImageAddNoise", outputs=["IMAGE"], python_module=_IMAGES)
def ImageAddNoise(
    image: Annotated[Tensor, IMAGE],
    seed: Annotated[int, Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The random seed used for creating the noise.")],
    strength: Annotated[float, Float(0.5, min=0.0, max=1.0, step=0.01)],
) -> Tensor:
    """image + strength x Gaussian noise, clamped to 0..1. The noise is drawn as ComfyUI draws it
    (a CPU generator seeded with ``seed``, float32 normals of the image's whole shape), so a
    seed gives the same picture in both."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(image.shape, generator=generator, device="cpu").to(image)
    return torch.clamp(image + strength * noise, min=0.0, max=1.0)


@node(category="image/transform", display_name="ResizeAndPadImage", outputs=["IMAGE"], python_module=_IMAGES)
def ResizeAndPadImage(
    image: Annotated[Tensor, IMAGE],
    target_width: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    target_height: Annotated[int, Int(512, min=1, max=MAX_RESOLUTION, step=1)],
    padding_color: Annotated[str, Combo(("white", "black"))],
    interpolation: Annotated[str, Combo(RESIZE_METHODS)],
) -> Tensor:
    """Scales the image to fit inside target_width x target_height keeping its aspect (the
    scaled sides are truncated to whole pixels), then centres it on a white or black canvas of
    exactly that size (the odd pixel of padding goes right and bottom)."""
    b, h, w, c = image.shape
    check_tensor((b, target_height, target_width, c),
                 f"ResizeAndPadImage target_width {target_width} x target_height {target_height}", "an image")
    scale = min(target_width / w, target_height / h)
    new_w, new_h = int(w * scale), int(h * scale)
    if new_w < 1 or new_h < 1:
        raise ValueError(f"ResizeAndPadImage: a {w}x{h} image fitted into {target_width}x{target_height} "
                         f"would be {new_w}x{new_h} pixels; make the target larger")
    check_resize(image, new_w, new_h, "ResizeAndPadImage")
    resized = upscale(image.movedim(-1, 1), new_w, new_h, interpolation)
    canvas = torch.full((b, c, target_height, target_width), 0.0 if padding_color == "black" else 1.0,
                        dtype=image.dtype, device=image.device)
    top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
    canvas[:, :, top:top + new_h, left:left + new_w] = resized
    return canvas.movedim(1, -1)


def _repeat_batch(samples: Tensor, batch: int) -> Tensor:
    """``samples`` cut or cycled to ``batch`` items (ComfyUI's repeat_to_batch_size)."""
    if samples.shape[0] > batch:
        return samples[:batch]
    if samples.shape[0] < batch:
        times = -(-batch // samples.shape[0])
        return samples.repeat((times,) + (1,) * (samples.ndim - 1))[:batch]
    return samples


_AXES = {"x": -1, "y": -2, "t": -3}


def _min_rank(dim: str) -> int:
    """The rank a latent needs for ``dim``: t is the frame axis of a video latent [B, C, T, H, W];
    on an image latent [B, C, H, W] ComfyUI would use the channels there, which no model could
    read back, so that is refused."""
    return 5 if dim.lstrip("-") == "t" else 3


@node(category="latent/advanced", outputs=[LATENT], python_module=_LATENT)
def LatentConcat(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT],
                 dim: Annotated[str, Combo(CONCAT_DIMS)]) -> dict:
    """samples2 joined to samples1 along width (x), height (y) or time (t); "-" puts samples2
    first. samples2's batch is cut or cycled to samples1's; the other sides must match."""
    s1, s2 = samples1["samples"], samples2["samples"]
    axis = _AXES[dim.lstrip("-")]
    if s1.ndim < _min_rank(dim) or s2.ndim != s1.ndim:
        raise ValueError(f"LatentConcat: dim {dim!r} needs latents with a {dim.lstrip('-')} axis of the same "
                         f"rank; got samples1 {tuple(s1.shape)} and samples2 {tuple(s2.shape)}")
    s2 = _repeat_batch(s2, s1.shape[0])
    others = [i for i in range(1, s1.ndim) if i != s1.ndim + axis]
    if any(s1.shape[i] != s2.shape[i] for i in others):
        raise ValueError(f"LatentConcat: along {dim!r} every other side must match; got samples1 "
                         f"{tuple(s1.shape)} and samples2 {tuple(s2.shape)}")
    shape = list(s1.shape)
    shape[axis] += s2.shape[axis]
    check_tensor(shape, f"LatentConcat of {tuple(s1.shape)} and {tuple(s2.shape)}", "a latent")
    out = dict(samples1)
    out["samples"] = torch.cat((s2, s1) if dim.startswith("-") else (s1, s2), dim=axis)
    return out


@node(category="latent/advanced", outputs=[LATENT], python_module=_LATENT)
def LatentCut(
    samples: Annotated[dict, LATENT],
    dim: Annotated[str, Combo(("x", "y", "t"))],
    index: Annotated[int, Int(0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1)],
    amount: Annotated[int, Int(1, min=1, max=MAX_RESOLUTION, step=1)],
) -> dict:
    """``amount`` steps of the latent along x, y or t (frames of a video latent) from ``index``
    (negative counts from the end). As ComfyUI, a start past the end moves in to the last step
    and amount is cut to what is there."""
    s = samples["samples"]
    axis = s.ndim + _AXES[dim]
    if s.ndim < _min_rank(dim):
        raise ValueError(f"LatentCut: dim {dim!r} needs a latent with a {dim} axis; got {tuple(s.shape)}")
    size = s.shape[axis]
    if index >= 0:
        index = min(index, size - 1)
        amount = min(size - index, amount)
    else:
        index = max(index, -size)
        amount = min(-index, amount)
    out = dict(samples)
    out["samples"] = torch.narrow(s, axis, index, amount)
    return out


# ITU-R BT.601 full-range YCbCr, chroma centred on 0.5, as kornia (which ComfyUI calls) computes
# it. The inverse is the exact one of kornia 0.9 (ComfyUI 0.3.64's pin): 1/0.713 and 1/0.564,
# and green from Y's definition, rather than the rounded 1.403/0.714/0.344/1.773 of older kornia.
_KR, _KG, _KB = 0.299, 0.587, 0.114
_CB, _CR = 0.564, 0.713
_R_CR, _B_CB = 1 / _CR, 1 / _CB
_G_CR, _G_CB = _KR / _CR / _KG, _KB / _CB / _KG


@node(category="image/batch", outputs=[("Y", "IMAGE"), ("U", "IMAGE"), ("V", "IMAGE")], python_module=_MORPHOLOGY)
def ImageRGBToYUV(image: Annotated[Tensor, IMAGE]) -> tuple:
    """Y, Cb and Cr (BT.601, chroma centred on 0.5), each as a grey image of the input's shape."""
    r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
    y = _KR * r + _KG * g + _KB * b
    u = (b - y) * _CB + 0.5
    v = (r - y) * _CR + 0.5
    return y.expand_as(image), u.expand_as(image), v.expand_as(image)


@node(category="image/batch", outputs=["IMAGE"], python_module=_MORPHOLOGY)
def ImageYUVToRGB(Y: Annotated[Tensor, IMAGE], U: Annotated[Tensor, IMAGE], V: Annotated[Tensor, IMAGE]) -> Tensor:
    """RGB from Y, Cb and Cr images (each image's channels averaged first), BT.601, clamped to 0..1."""
    if not (Y.shape[:3] == U.shape[:3] == V.shape[:3]):
        raise ValueError(f"ImageYUVToRGB: Y {tuple(Y.shape)}, U {tuple(U.shape)} and V {tuple(V.shape)} "
                         f"must have the same batch, height and width")
    y, cb, cr = (t.mean(dim=-1, keepdim=True) for t in (Y, U, V))
    r = y + _R_CR * (cr - 0.5)
    g = y - _G_CR * (cr - 0.5) - _G_CB * (cb - 0.5)
    b = y + _B_CB * (cb - 0.5)
    return torch.cat((r, g, b), dim=-1).clamp(0, 1)


@node(category="mask", display_name="MaskPreview", output_node=True, python_module="comfy_extras.nodes_mask")
def MaskPreview(mask: Annotated[Tensor, MASK],
                prompt: Annotated[dict, Hidden("PROMPT")],
                extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
                ctx: NodeContext) -> Result:
    """Saves the masks as grey images to the temp folder for viewing."""
    images = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
    prefix = "latentgraph_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
    saved = save_images(images, ctx.env.temp_dir, prefix, "temp", 4, prompt, extra_pnginfo)
    return Result(ui={"images": saved})


def porter_duff(src: Tensor, src_a: Tensor, dst: Tensor, dst_a: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Porter and Duff's compositing operators on straight-alpha images, with ComfyUI's
    conventions: the inputs' alphas are MASKs (1 = transparent) and so is the returned one;
    colour is premultiplied for the operator and divided back where alpha > 1e-5."""
    sa, da = 1 - src_a, 1 - dst_a
    s, d = src * sa, dst * da
    union = sa + da - sa * da
    ops = {  # mode: (alpha, premultiplied colour)
        "ADD": lambda: (torch.clamp(sa + da, 0, 1), torch.clamp(s + d, 0, 1)),
        "CLEAR": lambda: (torch.zeros_like(da), torch.zeros_like(d)),
        "DARKEN": lambda: (union, (1 - da) * s + (1 - sa) * d + torch.min(s, d)),
        "DST": lambda: (da, d),
        "DST_ATOP": lambda: (sa, sa * d + (1 - da) * s),
        "DST_IN": lambda: (sa * da, d * sa),
        "DST_OUT": lambda: ((1 - sa) * da, (1 - sa) * d),
        "DST_OVER": lambda: (da + (1 - da) * sa, d + (1 - da) * s),
        "LIGHTEN": lambda: (union, (1 - da) * s + (1 - sa) * d + torch.max(s, d)),
        "MULTIPLY": lambda: (sa * da, s * d),
        "OVERLAY": lambda: (union, torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d))),
        "SCREEN": lambda: (union, s + d - s * d),
        "SRC": lambda: (sa, s),
        "SRC_ATOP": lambda: (da, da * s + (1 - sa) * d),
        "SRC_IN": lambda: (sa * da, s * da),
        "SRC_OUT": lambda: ((1 - da) * sa, (1 - da) * s),
        "SRC_OVER": lambda: (sa + (1 - sa) * da, s + (1 - sa) * d),
        "XOR": lambda: ((1 - da) * sa + (1 - sa) * da, (1 - da) * s + (1 - sa) * d),
    }
    if mode not in ops:
        raise ValueError(f"PorterDuffImageComposite: unknown mode {mode!r}; choose one of {', '.join(ops)}")
    alpha, colour = ops[mode]()
    colour = torch.where(alpha > 1e-5, colour / alpha, torch.zeros_like(colour))
    return torch.clamp(colour, 0, 1), 1 - alpha


def _fit(t: Tensor, h: int, w: int) -> Tensor:
    """One image or alpha [H', W', C] resized to h x w as ComfyUI does here (bicubic, centre-cropped
    to the aspect)."""
    return upscale(t.movedim(-1, 0)[None], w, h, "bicubic", "center")[0].movedim(0, -1)


@node(category="mask/compositing", display_name="Porter-Duff Image Composite", outputs=["IMAGE", "MASK"],
      python_module="comfy_extras.nodes_compositing")
def PorterDuffImageComposite(
    source: Annotated[Tensor, IMAGE],
    source_alpha: Annotated[Tensor, MASK],
    destination: Annotated[Tensor, IMAGE],
    destination_alpha: Annotated[Tensor, MASK],
    mode: Annotated[str, Combo(PORTER_DUFF_MODES, default="DST")],
) -> tuple:
    """Composites source over destination with one Porter-Duff operator, image by image for the
    shortest of the four batches. Alphas are MASKs (1 = transparent). The destination's alpha,
    the source and then the source's alpha are resized (bicubic, centre crop) to the
    destination's size where they differ."""
    n = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
    if source.shape[-1] != destination.shape[-1]:
        raise ValueError(f"PorterDuffImageComposite: source has {source.shape[-1]} channels and destination "
                         f"{destination.shape[-1]}: they must match")
    h, w = destination.shape[1:3]
    check_tensor((n, h, w, destination.shape[-1] + 1), f"PorterDuffImageComposite of {n} {w}x{h} images", "an image")
    images, alphas = [], []
    for i in range(n):
        src, dst = source[i], destination[i]
        src_a, dst_a = source_alpha[i].unsqueeze(-1), destination_alpha[i].unsqueeze(-1)
        if dst_a.shape[:2] != dst.shape[:2]:
            dst_a = _fit(dst_a, h, w)
        if src.shape != dst.shape:
            src = _fit(src, h, w)
        if src_a.shape != dst_a.shape:
            src_a = _fit(src_a, h, w)
        image, alpha = porter_duff(src, src_a, dst, dst_a, mode)
        images.append(image)
        alphas.append(alpha.squeeze(-1))
    return torch.stack(images), torch.stack(alphas)


def _list_outputs(env) -> list[str]:
    """The images of the output folder, annotated as ComfyUI's frontend sends them."""
    return [f"{name} [output]" for name in sorted(_list_files(env.output_dir, IMAGE_EXTENSIONS))] if env else []


def _output_path(image: str, env):
    # a bare name is read from the output folder (the node's purpose); "[input]"/"[temp]" as LoadImage
    return env.annotated_path(image, default="output")


def _output_fingerprint(image: str, env):
    path = _output_path(image, env)
    return file_identity(path, content_hash=True) if path is not None else ("invalid", image)


def _output_validate(image: str, env):
    path = _output_path(image, env)
    if path is None or not path.is_file():
        return f"Invalid image file: {image} (looked in {env.output_dir})"
    return None


@node(category="image", display_name="Load Image (from Outputs)", outputs=["IMAGE", "MASK"], experimental=True,
      fingerprint=_output_fingerprint, validate=_output_validate)
def LoadImageOutput(image: Annotated[str, Combo(_list_outputs, image_upload=True, extra={"image_folder": "output"})],
                    ctx: NodeContext) -> tuple:
    """Loads an image from the output folder (so a result can be worked on again); the mask is its
    inverted alpha channel. The same checks as LoadImage: no path out of the folder, Pillow's
    pixel budget, a clear error for a file that is not an image."""
    path = _output_path(image, ctx.env)
    try:
        with pillow_guard(image), Image.open(path) as img:
            return pil_to_tensors(img, image)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {image!r}: {exc}") from exc
