"""Conversions between IMAGE/MASK tensors and PIL images, and ComfyUI's output file naming."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One IMAGE [H, W, C] in 0..1 -> an 8-bit RGB (or L) PIL image (ComfyUI's rounding: clip(x*255))."""
    arr = np.clip(255.0 * image.detach().cpu().float().numpy(), 0, 255).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return Image.fromarray(arr)


def pil_to_tensors(img: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """A PIL image (every frame of the same size) -> IMAGE [B, H, W, 3] and MASK [B, H, W].
    The mask is 1 - alpha, so painted-out (transparent) pixels are 1, as in ComfyUI."""
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0))
        if "A" in frame.getbands():
            alpha = np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        elif frame.mode == "P" and "transparency" in frame.info:
            alpha = np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
            masks.append(1.0 - torch.from_numpy(alpha))
        else:
            masks.append(torch.zeros((64, 64), dtype=torch.float32))
    if not images:
        raise ValueError("the image has no frames")
    if len(images) > 1 and img.format == "MPO":  # a stereo JPEG: keep the first view
        images, masks = images[:1], masks[:1]
    return torch.stack(images), torch.stack(masks)


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


def png_metadata(prompt: dict | None, extra_pnginfo: dict | None) -> PngInfo:
    """The text chunks ComfyUI writes: ``prompt`` (API JSON) and each key of extra_pnginfo."""
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    return info


def save_images(images: torch.Tensor, folder_root: Path, prefix: str, kind: str, compress_level: int,
                prompt: dict | None = None, extra_pnginfo: dict | None = None) -> list[dict]:
    """Write a batch as numbered PNGs; return ComfyUI's UI entries for them."""
    folder, stem, subfolder, counter = save_path(folder_root, prefix)
    folder.mkdir(parents=True, exist_ok=True)
    meta = png_metadata(prompt, extra_pnginfo)
    results = []
    for image in images:
        name = f"{stem}_{counter:05}_.png"
        tensor_to_pil(image).save(folder / name, pnginfo=meta, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return results
