"""ComfyUI's ``node_helpers``: conditioning edits and Pillow's safe opening."""

from __future__ import annotations

from typing import Any, Callable

from PIL import ImageFile, UnidentifiedImageError

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def conditioning_set_values(conditioning: list, values: dict | None = None, append: bool = False) -> list:
    """A copy of CONDITIONING with ``values`` set in every entry's options (``append``: added
    with ``+`` to a value already there, as ComfyUI: lists and tuples join, numbers add)."""
    out = []
    for tensor, opts in conditioning:
        opts = dict(opts)
        for key, value in (values or {}).items():
            if append and opts.get(key) is not None:
                value = opts[key] + value
            opts[key] = value
        out.append([tensor, opts])
    return out


def pillow(fn: Callable, arg: Any) -> Any:
    """Call a PIL function, retrying with truncated images allowed (ComfyUI's helper)."""
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        return fn(arg)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


def hasher() -> Callable:
    import hashlib

    return hashlib.sha256


def string_to_torch_dtype(string: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(string)


def image_alpha_fix(destination, source):
    """Bring two (B, H, W, C) images to the same channel count (dropping or adding alpha)."""
    import torch

    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = torch.nn.functional.pad(destination, (0, 1))
        destination[..., -1] = 1.0
    return destination, source


