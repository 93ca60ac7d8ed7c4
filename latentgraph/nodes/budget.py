"""The budgets nodes hold to, checked before the allocation they guard: the pixels and frames of
an image file (from its header, before each frame is decoded), the characters of a prompt
(before it is tokenized) and the bytes of a tensor whose size comes from a node's inputs (from
the shape and dtype, before it is made). The limits are in graph/budgets.py's one table.

Why: the declared ranges are ComfyUI's, and they allow 16384 x 16384 x batch 4096; torch then
either raises a raw allocator error or overcommits and the process is killed later. A tiny GIF
can hold 100,000 frames, and a PNG header can claim 100000 x 100000 pixels."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from ..graph.lazy import lazy
torch = lazy("torch")
_FLOAT32 = lazy("torch", "float32")  # the defaults below: only .itemsize is read
from PIL import Image

from ..graph.budgets import limit, over

_UNITS = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB', 8 * 2**30 -> '8 GiB' (binary units, one decimal at most)."""
    value, unit = float(n), 0
    while value >= 1024 and unit < len(_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{n:,} bytes"
    return f"{value:.1f}".rstrip("0").rstrip(".") + f" {_UNITS[unit]}"


def tensor_bytes(shape: Sequence[int], dtype: torch.dtype = _FLOAT32) -> int:
    """Bytes of a tensor of ``shape`` and ``dtype`` (Python ints: no overflow however large)."""
    return math.prod(int(s) for s in shape) * dtype.itemsize


def check_tensor(shape: Sequence[int], what: str, kind: str, dtype: torch.dtype = _FLOAT32) -> None:
    """Refuse to make a tensor of ``shape`` past ``tensor_bytes``. ``what`` names the node's inputs
    that give the size ("width 16384 x height 16384 x batch_size 4096"), ``kind`` the tensor
    ("a latent"). Costs a product of a few ints, so normal sizes pay nothing."""
    nbytes = tensor_bytes(shape, dtype)
    cap = limit("tensor_bytes")
    if nbytes > cap:
        raise ValueError(f"{what} makes {kind} of {human_bytes(nbytes)}, which exceeds the limit "
                         f"tensor_bytes = {human_bytes(cap)}")


def check_prompt(text: str, input_name: str) -> None:
    """Refuse a prompt longer than ``prompt_chars`` before it is tokenized (tokens, chunks and the
    encoder's output all grow with it)."""
    if isinstance(text, str) and len(text) > limit("prompt_chars"):
        raise ValueError(over("prompt_chars", f"input {input_name!r} of {len(text):,} characters"))


# Formats whose frames Pillow composes onto one canvas, so every frame is decoded at img.size.
_ONE_CANVAS = ("GIF", "PNG", "WEBP")


class FrameBudget:
    """The frames and pixels of one image file, counted before each frame is decoded."""

    def __init__(self, name: str):
        self.name = name
        self.frames = 0
        self.pixels = 0

    def declare(self, img: Image.Image) -> None:
        """The whole file from its header: the frame count (Pillow reads it without decoding:
        APNG and WebP declare it, GIF and TIFF are walked) and, where every frame is the canvas,
        frames x canvas pixels."""
        n = int(getattr(img, "n_frames", 1) or 1)
        if n > limit("image_frames"):
            raise ValueError(over("image_frames", f"image {self.name!r}: {n:,} frames"))
        w, h = img.size
        if n > 1 and img.format in _ONE_CANVAS and n * w * h > limit("image_pixels"):
            raise ValueError(over("image_pixels", f"image {self.name!r}: {n:,} frames of {w} x {h} "
                                                  f"= {n * w * h:,} pixels"))

    def frame(self, size: tuple[int, int]) -> None:
        """The next frame, of ``size`` (from its header), before it is decoded."""
        w, h = size
        self.frames += 1
        self.pixels += w * h
        if w * h > limit("image_pixels"):
            raise ValueError(over("image_pixels", f"image {self.name!r}: a frame of {w} x {h} = {w * h:,} pixels"))
        if self.frames > limit("image_frames"):
            raise ValueError(over("image_frames", f"image {self.name!r}: {self.frames:,} frames"))
        if self.pixels > limit("image_pixels"):
            raise ValueError(over("image_pixels", f"image {self.name!r}: frames 1 to {self.frames:,} "
                                                  f"= {self.pixels:,} pixels"))


@contextmanager
def pillow_guard(name: str) -> Iterator[None]:
    """Pillow's own decompression-bomb guard: its error (past twice PIL.Image.MAX_IMAGE_PIXELS)
    as a ValueError naming the file and the limit, never a bare traceback. Its warning (past
    once the limit) is silenced: our own header checks (FrameBudget) have run by then, and
    ComfyUI loads such images too.

    catch_warnings swaps the process's warning filters while the block runs (Python < 3.14 has
    no per-thread filters): a warning another thread issues meanwhile meets these filters, which
    differ from the usual ones only for Pillow's bomb warning. Setting PIL.Image.MAX_IMAGE_PIXELS
    instead would change Pillow for the whole process for good."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as exc:
            raise ValueError(f"image {name!r} is refused by Pillow's decompression-bomb guard "
                             f"(PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} pixels): {exc}") from exc
