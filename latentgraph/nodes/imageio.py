"""Conversions between IMAGE/MASK tensors and PIL images, and ComfyUI's output file naming."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from ..graph.lazy import lazy
np = lazy("numpy")
torch = lazy("torch")
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from ..graph.fileio import write_atomic
from .budget import FrameBudget


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One IMAGE [H, W, C] in 0..1 -> an 8-bit RGB (or L) PIL image (ComfyUI's rounding: clip(x*255))."""
    arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def pil_to_tensors(img: Image.Image, name: str = "the image") -> tuple[torch.Tensor, torch.Tensor]:
    """A PIL image (every frame of the same size) -> IMAGE [B, H, W, 3] and MASK [B, H, W].
    The mask is 1 - alpha, so painted-out (transparent) pixels are 1, as in ComfyUI.

    The frame count and pixels are held to the image_frames and image_pixels budgets from the
    header, before each frame is decoded (``name`` is the file, for the message); frames are
    kept as 8-bit pixels and made float once, into the output (not a float copy per frame and
    then a stacked one)."""
    budget = FrameBudget(name)
    budget.declare(img)
    pixels, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        budget.frame(frame.size)
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        pixels.append(np.asarray(rgb, dtype=np.uint8))
        if "A" in frame.getbands():
            alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        else:
            masks.append(torch.zeros((64, 64), dtype=torch.float32))
    if not pixels:
        raise ValueError("the image has no frames")
    if len(pixels) > 1 and img.format == "MPO":  # a stereo JPEG: keep the first view
        pixels, masks = pixels[:1], masks[:1]
    images = torch.empty((len(pixels), *pixels[0].shape), dtype=torch.float32)  # (B, H, W, 3)
    view = images.numpy()  # numpy casts the read-only 8-bit frames in place, torch would warn
    for i, arr in enumerate(pixels):
        view[i] = arr
    return images.div_(255.0), torch.stack(masks)  # the same float32 values as arr / 255.0


_COUNTER = re.compile(r"_(\d+)_?\.[A-Za-z0-9]+$")


def save_path(base_dir: Path, filename_prefix: str) -> tuple[Path, str, str, int]:
    """Where the next output of ``filename_prefix`` goes: (folder, file stem, subfolder, counter).
    The counter is one more than the highest already there, as in ComfyUI. A prefix that
    would leave ``base_dir`` is refused."""
    prefix = filename_prefix.replace("\\", "/").strip()
    sub, _, stem = prefix.rpartition("/")
    if not stem:
        raise ValueError(f"filename_prefix {filename_prefix!r} names no file")
    base = base_dir.resolve()
    folder = (base / sub).resolve()
    if folder != base and base not in folder.parents:
        raise ValueError(f"filename_prefix {filename_prefix!r} would write outside {base_dir}")
    highest = 0
    if folder.is_dir():
        for entry in folder.iterdir():
            name = entry.name
            if name.startswith(stem + "_"):
                m = _COUNTER.search(name[len(stem):])
                if m and name[len(stem):m.start()] == "":
                    highest = max(highest, int(m.group(1)))
    return folder, stem, folder.relative_to(base).as_posix() if folder != base else "", highest + 1


# bytes of JSON text in one PNG's metadata (prompt plus every extra_pnginfo value): a UI workflow
# is a few hundred KiB at most, and each image of a batch carries its own copy
PNG_METADATA_BUDGET = 16 * 1024 * 1024


def png_metadata(prompt: dict | None, extra_pnginfo: dict | None, budget: int = PNG_METADATA_BUDGET) -> PngInfo:
    """The text chunks ComfyUI writes: ``prompt`` (API JSON) and each key of extra_pnginfo,
    measured while they are serialised: ValueError naming the budget once they pass it."""
    info = PngInfo()
    chunks = [("prompt", prompt)] if prompt is not None else []
    chunks += [(str(key), value) for key, value in (extra_pnginfo or {}).items()]
    left = budget
    for key, value in chunks:
        text = _bounded_json(value, key, left, budget)
        left -= len(text) + len(key)
        info.add_text(key, text)
    return info


def _bounded_json(value, key: str, left: int, budget: int) -> str:
    """``json.dumps(value)`` built piece by piece and abandoned as soon as it passes ``left``
    characters (ASCII, so bytes): an oversized value is never serialised whole."""
    parts, size = [], 0
    for piece in json.JSONEncoder().iterencode(value):
        size += len(piece)
        if size > left:
            raise ValueError(f"the PNG metadata is over its budget of {budget:,} bytes (PNG_METADATA_BUDGET) "
                             f"at the {key!r} text chunk: the prompt and extra_pnginfo are written into every "
                             f"image, so keep large values out of extra_pnginfo")
        parts.append(piece)
    return "".join(parts)


def save_images(images: torch.Tensor, folder_root: Path, prefix: str, kind: str, compress_level: int,
                prompt: dict | None = None, extra_pnginfo: dict | None = None) -> list[dict]:
    """Write a batch as numbered PNGs; return ComfyUI's UI entries for them."""
    folder, stem, subfolder, counter = save_path(folder_root, prefix)
    meta = png_metadata(prompt, extra_pnginfo)  # before any file: an oversized one writes nothing
    results = []
    for image in images:
        name = f"{stem}_{counter:05}_.png"
        buf = io.BytesIO()
        tensor_to_pil(image).save(buf, format="PNG", pnginfo=meta, compress_level=compress_level)
        write_atomic(folder / name, buf.getvalue())  # a kill never leaves a truncated PNG under its name
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results
