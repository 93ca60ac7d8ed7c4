"""ComfyUI's ``comfy.utils``: the progress bar, image resizing, and reading and writing
weight files, over latentgraph's own functions."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.nodes.image import upscale as _upscale
from latentgraph.nodes.ip2p import resize_to_batch as _resize_to_batch
from latentgraph.nodes.latent import bislerp as _bislerp

PROGRESS_BAR_ENABLED = True
PROGRESS_BAR_HOOK: Callable | None = None  # set_progress_bar_global_hook; None: the running node's progress


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = bool(enabled)


def set_progress_bar_global_hook(function: Callable | None) -> None:
    global PROGRESS_BAR_HOOK
    PROGRESS_BAR_HOOK = function


class ProgressBar:
    """Steps of the running node: each update reaches the clients as a progress message (and
    is where an interrupt stops the node), as ComfyUI's does."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = total
        self.current = 0
        self.node_id = node_id
        self.hook = PROGRESS_BAR_HOOK

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        image = preview[1] if isinstance(preview, tuple) and len(preview) >= 2 else preview
        if self.hook is not None:
            self.hook(self.current, self.total, preview, node_id=self.node_id)
            return
        ctx = runtime.current_node()
        if ctx is None:
            return
        if self.node_id is None or str(self.node_id) == ctx.node_id:
            ctx.progress(self.current, self.total, image)
        else:  # a bar for another node (a pack's sub-step): its message names that node, as ComfyUI's
            ctx.check_interrupt()
            ctx._emit("progress", {"value": self.current, "max": self.total, "prompt_id": ctx.prompt_id,
                                   "node": str(self.node_id)})

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


def common_upscale(samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str) -> torch.Tensor:
    """Resize channel-first samples (B, C, H, W): nearest-exact, bilinear, area, bicubic,
    lanczos, bislerp; ``crop`` "center" or "disabled". A 5-D (B, C, T, H, W) video latent is
    resized frame by frame, as ComfyUI does."""
    if samples.ndim == 5:
        b, c, t, h, w = samples.shape
        frames = samples.movedim(2, 1).reshape(b * t, c, h, w)
        out = common_upscale(frames, width, height, upscale_method, crop)
        return out.reshape(b, t, c, *out.shape[-2:]).movedim(1, 2)
    if upscale_method == "bislerp":
        from latentgraph.nodes.latent import upscale_latent

        return upscale_latent(samples, width, height, "bislerp", crop)
    return _upscale(samples, width, height, upscale_method, crop)


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """How many tiles tiled_scale runs (what a pack sizes its ProgressBar with)."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def tiled_scale(samples: torch.Tensor, function: Callable, tile_x: int = 64, tile_y: int = 64, overlap: int = 8,
                upscale_amount: float = 4, out_channels: int = 3, output_device="cpu", pbar=None) -> torch.Tensor:
    """Run ``function`` over overlapping tiles of (B, C, H, W) ``samples`` and blend the tiles
    with linear feathers (latentgraph's tiled upscaler). Square tiles and a whole-number scale
    only: other calls are refused rather than blended differently from ComfyUI."""
    if tile_x != tile_y or float(upscale_amount) != int(upscale_amount):
        raise NotImplementedError(f"comfy.utils.tiled_scale: latentgraph tiles squares by a whole-number scale "
                                  f"(got tiles {tile_x} x {tile_y}, scale {upscale_amount})")
    from latentgraph.models.upscale import tiled_upscale

    step = (lambda: pbar.update(1)) if pbar is not None else None
    out = tiled_upscale(function, samples, int(upscale_amount), out_channels, tile_x, overlap, step)
    return out.to(output_device)


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _bislerp(samples, width, height)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return _upscale(samples, width, height, "lanczos")


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut or tile ``tensor`` along ``dim`` to ``batch_size``."""
    n = tensor.shape[dim]
    if n > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if n < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = -(-batch_size // n)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    return _resize_to_batch(tensor, batch_size)


def load_torch_file(ckpt: str, safe_load: bool = False, device=None, return_metadata: bool = False):
    """A weight file's tensors (safetensors, or a pickle through torch.load(weights_only=True)
    only: a file that needs arbitrary objects is refused whatever ``safe_load`` says)."""
    from latentgraph.models.checkpoint import read_state_dict

    sd, metadata = read_state_dict(ckpt)
    if device is not None:
        sd = {k: v.to(device) for k, v in sd.items()}
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict, ckpt: str, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in sd.items()}, ckpt, metadata=metadata)


def calculate_parameters(sd: dict, prefix: str = "") -> int:
    return sum(v.nelement() for k, v in sd.items() if k.startswith(prefix))


def state_dict_prefix_replace(state_dict: dict, replace_prefix: dict, filter_keys: bool = False) -> dict:
    out = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old):]] = state_dict.pop(key) if not filter_keys else state_dict[key]
    return out


def get_attr(obj: Any, attr: str) -> Any:
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr(obj: Any, attr: str, value: Any) -> Any:
    names = attr.split(".")
    for name in names[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, names[-1])
    setattr(obj, names[-1], value)
    return prev


def set_attr_param(obj: Any, attr: str, value: torch.Tensor) -> Any:
    return set_attr(obj, attr, torch.nn.Parameter(value, requires_grad=False))


def copy_to_param(obj: Any, attr: str, value: torch.Tensor) -> None:
    get_attr(obj, attr).data.copy_(value)
