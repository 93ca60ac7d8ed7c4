"""Upscale-model nodes with ComfyUI's names and inputs: load an ESRGAN/SwinIR/HAT/... model
(models/upscale_models, through spandrel) and upscale images with it, tile by tile.

The tile is ComfyUI's 512 (overlap 32) unless the memory estimate for one tile does not fit the
budget: then it is halved, before anything runs, down to 128 (ComfyUI instead catches an
out-of-memory error and halves). The budget is ``tensor_bytes`` and, on CUDA, the free device
memory. The output tensor is checked against ``tensor_bytes`` before it is made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import IMAGE, Combo, NodeContext, Socket, node
from ..graph.budgets import limit
file_key = lazy("..models.checkpoint", "file_key")
_upscale = lazy("..models.upscale")  # OVERLAP, an int: read where used
load_upscale_model_file = lazy("..models.upscale", "load_upscale_model_file")
pick_tile = lazy("..models.upscale", "pick_tile")
tile_bytes = lazy("..models.upscale", "tile_bytes")
tile_steps = lazy("..models.upscale", "tile_steps")
upscale_image = lazy("..models.upscale", "upscale_image")
from .budget import check_tensor, human_bytes
from .loaders import missing_model, model_files, model_identity, services

UPSCALE_MODEL = Socket("UPSCALE_MODEL")
FOLDER = "upscale_models"
Descriptor = Any  # spandrel.ImageModelDescriptor (spandrel is imported only when a model loads)


def _check(model_name, env):
    return missing_model(env, FOLDER, "upscale model", model_name)


def _key(model_name, env):
    return model_identity(env, FOLDER, model_name)


@node(category="loaders", display_name="Load Upscale Model", outputs=[UPSCALE_MODEL],
      fingerprint=_key, validate=_check)
def UpscaleModelLoader(model_name: Annotated[str, Combo(model_files(FOLDER))], ctx: NodeContext) -> Descriptor:
    """Loads an image upscale model (ESRGAN, RealESRGAN, SwinIR, HAT, DAT, OmniSR, ... any
    single-image architecture spandrel detects) from models/upscale_models."""
    _, cache = services(ctx)
    path: Path = ctx.env.find_model(FOLDER, model_name)
    # float32 on the CPU, as ComfyUI keeps them; moved to the compute device while upscaling
    return cache.get_or_load(("upscale_model", *file_key(path)), lambda: load_upscale_model_file(path))


def memory_budget(device: torch.device) -> int:
    """Bytes one tile's activations may take: ``tensor_bytes``, and on CUDA no more than the
    free device memory (on the CPU, free memory is not a bound Linux keeps: it overcommits)."""
    budget = limit("tensor_bytes")
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = min(budget, free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return budget


def choose_tile(desc: Descriptor, image: torch.Tensor, budget: int) -> int:
    """ComfyUI's tile (512) or the largest half of it whose estimate fits ``budget``."""
    scale = int(desc.scale)
    tile = pick_tile(scale, budget, channels=image.shape[-1])
    if tile is None:
        need = tile_bytes(128, scale, channels=image.shape[-1])
        raise ValueError(f"upscaling with a {scale}x model needs about {human_bytes(need)} for even a "
                         f"128 x 128 tile, which exceeds the memory budget of {human_bytes(budget)} "
                         f"(the limit tensor_bytes = {human_bytes(limit('tensor_bytes'))}, and free device memory)")
    return tile


def _check_sizes(desc: Descriptor, image: torch.Tensor) -> None:
    """Refuse an image the model cannot take, or an output past ``tensor_bytes``, before running."""
    b, h, w, c = image.shape
    if c != desc.input_channels:
        raise ValueError(f"input 'image' has {c} channels but the {desc.architecture.name} upscale model "
                         f"takes {desc.input_channels}-channel images")
    s = int(desc.scale)
    shape = (b, int(desc.output_channels), h * s, w * s)
    # the output plus the tile accumulator of one image: budgeted as one tensor of the whole batch
    check_tensor(shape, f"upscaling an image batch of {b} x {w} x {h} by {s}x", "an image")


@node(category="image/upscaling", display_name="Upscale Image (using Model)", outputs=[IMAGE])
def ImageUpscaleWithModel(upscale_model: Annotated[Descriptor, UPSCALE_MODEL], image: Annotated[Tensor, IMAGE],
                          ctx: NodeContext) -> Tensor:
    """Upscales images with an upscale model, in 512 x 512 tiles overlapping by 32 (smaller when
    one tile's memory estimate does not fit the budget); progress per tile; output clamped 0..1."""
    if image.ndim != 4:
        raise ValueError(f"input 'image' must be an IMAGE (batch, height, width, channels), got shape {tuple(image.shape)}")
    _check_sizes(upscale_model, image)
    placement, _ = services(ctx)
    tile = choose_tile(upscale_model, image, memory_budget(placement.device))
    total = image.shape[0] * tile_steps(image.shape[2], image.shape[1], tile, _upscale.OVERLAP)
    done = [0]

    def step() -> None:
        done[0] += 1
        ctx.progress(done[0], total)

    upscale_model.to(placement.device)
    try:
        return upscale_image(upscale_model, image.float(), placement.device, tile, _upscale.OVERLAP, step)
    finally:
        upscale_model.to("cpu")  # ComfyUI moves it back too: it waits on the CPU between runs


__all__ = ["UpscaleModelLoader", "ImageUpscaleWithModel", "UPSCALE_MODEL", "TILE"]


def __getattr__(name: str):
    # TILE (an int) is re-exported from models/upscale.py, read when asked so that importing this
    # module imports no torch, and never handed out as a lazy proxy (which is not an int)
    if name == "TILE":
        return _upscale.TILE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
