"""SaveAnimatedWEBP and SaveAnimatedPNG: a batch of images as one animated file in the output
folder, with ComfyUI's names, counters and metadata (the prompt and workflow in WebP EXIF tags
0x0110 and down from 0x010F, as "key:json"; in APNG ``comf`` chunks after the image data)."""

from __future__ import annotations

import io
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..graph import IMAGE, Boolean, Combo, Float, Hidden, Int, NodeContext, Result, String, node
from ..graph.fileio import write_atomic
from .imageio import PNG_METADATA_BUDGET, _bounded_json, save_path, tensor_to_pil

Tensor = lazy("torch", "Tensor")
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}


def _texts(prompt: dict | None, extra_pnginfo: dict | None) -> list[tuple[str, str]]:
    """(key, JSON) of the prompt and each extra_pnginfo value, held together to the metadata
    budget while they are serialised."""
    pairs = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
    out, left = [], PNG_METADATA_BUDGET
    for key, value in pairs:
        text = _bounded_json(value, str(key), left, PNG_METADATA_BUDGET)
        left -= len(text) + len(str(key))
        out.append((str(key), text))
    return out


def _frames(images: Tensor) -> list[Image.Image]:
    if images.shape[0] == 0:
        raise ValueError("an animation needs at least one image; the batch is empty")
    return [tensor_to_pil(image) for image in images]


@node(category="image/animation", display_name="SaveAnimatedWEBP", output_node=True,
      python_module="comfy_extras.nodes_images")
def SaveAnimatedWEBP(
    images: Annotated[Tensor, IMAGE],
    filename_prefix: Annotated[str, String("ComfyUI")],
    fps: Annotated[float, Float(6.0, min=0.01, max=1000.0, step=0.01)],
    lossless: Annotated[bool, Boolean(True)],
    quality: Annotated[int, Int(80, min=0, max=100)],
    method: Annotated[str, Combo(tuple(WEBP_METHODS))],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """The batch as one animated WebP (each frame shown 1000 / fps ms, truncated)."""
    frames = _frames(images)
    folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix)
    exif = frames[0].getexif()
    texts = _texts(prompt, extra_pnginfo)
    if prompt is not None:  # the prompt in 0x0110; extra_pnginfo keys in 0x010F, 0x010E, ... as in ComfyUI
        exif[0x0110] = "{}:{}".format(*texts.pop(0))
    for tag, (key, text) in zip(range(0x010F, 0, -1), texts):
        exif[tag] = f"{key}:{text}"
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, duration=int(1000.0 / fps), append_images=frames[1:],
                   exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS[method])
    name = f"{stem}_{counter:05}_.webp"
    write_atomic(folder / name, buf.getvalue())
    return Result(ui={"images": [{"filename": name, "subfolder": subfolder, "type": "output"}],
                      "animated": (len(frames) != 1,)})


@node(category="image/animation", display_name="SaveAnimatedPNG", output_node=True,
      python_module="comfy_extras.nodes_images")
def SaveAnimatedPNG(
    images: Annotated[Tensor, IMAGE],
    filename_prefix: Annotated[str, String("ComfyUI")],
    fps: Annotated[float, Float(6.0, min=0.01, max=1000.0, step=0.01)],
    compress_level: Annotated[int, Int(4, min=0, max=9)],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """The batch as one animated PNG (APNG; each frame shown 1000 / fps ms, truncated)."""
    frames = _frames(images)
    folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix)
    info = PngInfo()
    for key, text in _texts(prompt, extra_pnginfo):
        # JSON is ASCII (json.dumps escapes the rest), so latin-1 always encodes it
        info.add(b"comf", key.encode("latin-1", "replace") + b"\0" + text.encode("latin-1"), after_idat=True)
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", pnginfo=info, compress_level=compress_level, save_all=True,
                   duration=int(1000.0 / fps), append_images=frames[1:])
    name = f"{stem}_{counter:05}_.png"
    write_atomic(folder / name, buf.getvalue())
    return Result(ui={"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)})
