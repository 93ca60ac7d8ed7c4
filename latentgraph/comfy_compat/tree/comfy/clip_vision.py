"""ComfyUI's ``comfy.clip_vision``: loading a CLIP image encoder (the CLIP_VISION value
CLIPVisionLoader gives, latentgraph's models/clip_vision.py ClipVision), its preprocessing,
and the ``Output`` record that ``encode_image`` results are. Image encoders latentgraph does
not load (SigLIP, DINOv2) are errors naming what was found, where ComfyUI loads them."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.models import clip_vision as _cv

from comfy.model_patcher import Alias  # the tree's own module

__all__ = ["ClipVisionModel", "Output", "clip_preprocess", "load", "load_clipvision_from_sd"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class Output(metaclass=Alias):
    """ComfyUI's encode result: fields read as attributes or items (``out["image_embeds"]``);
    latentgraph's ClipVisionOutput is one. Packs also make empty ones and fill them."""

    _ours = _cv.ClipVisionOutput

    def __getitem__(self, key: str):
        return getattr(self, key)

    def __setitem__(self, key: str, item) -> None:
        setattr(self, key, item)


class ClipVisionModel(metaclass=Alias):
    """What latentgraph's CLIP_VISION values are; they are made from files or state dicts
    (``load``, ``load_clipvision_from_sd``), not from a JSON config."""

    _ours = _cv.ClipVision

    def __init__(self, json_config=None):
        raise TypeError("comfy.clip_vision.ClipVisionModel(json_config): latentgraph builds CLIP vision models "
                        "from their tensors: comfy.clip_vision.load(path) or load_clipvision_from_sd(sd)")


def clip_preprocess(image: torch.Tensor, size: int = 224, mean: Sequence[float] = _cv.CLIP_MEAN,
                    std: Sequence[float] = _cv.CLIP_STD, crop: bool = True) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> normalised pixels (B, 3, size, size), as CLIPVisionEncode prepares them."""
    return _cv.clip_preprocess(image, size, crop, mean, std)


def _placed(load, key: tuple | None):
    from comfy.sd import _services  # the tree's own module

    placement, cache = _services()
    dtype = placement.dtypes["text"]  # as CLIPVisionLoader places them

    def build():
        return load(dtype).to(placement.home)

    if cache is None or key is None:
        return build()
    return cache.get_or_load((*key, placement.key()), build)


def load(ckpt_path: str) -> _cv.ClipVision:
    """The CLIP vision model of a file, as CLIPVisionLoader loads it (the same cached value)."""
    from latentgraph.models.checkpoint import file_key

    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"comfy.clip_vision.load: no file {ckpt_path}")
    return _placed(lambda dtype: _cv.load_clip_vision_file(path, dtype), ("clip_vision", *file_key(path)))


def load_clipvision_from_sd(sd: dict, prefix: str = "", convert_keys: bool = False) -> _cv.ClipVision:
    """A CLIP vision model from the tensors under ``prefix`` (transformers or OpenAI/OpenCLIP
    names: both are recognised, so ``convert_keys`` changes nothing here)."""
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"load_clipvision_from_sd: expected a non-empty dict of tensors, got {type(sd).__name__}")
    return _placed(lambda dtype: _cv.load_clip_vision(sd, "load_clipvision_from_sd", prefix, dtype=dtype), None)
