"""ComfyUI's ``comfy.utils``: the progress bar, image resizing, and reading and writing
weight files, over latentgraph's own functions."""

from __future__ import annotations

import itertools
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


def _per_dim(value, dims: int) -> list:
    return list(value) if isinstance(value, (tuple, list)) else [value] * dims


def _tile_mask(shape: torch.Size, feathers: list[int]) -> torch.Tensor:
    """Ones of ``shape`` (B, C, *dims) faded linearly over ``feathers[d]`` cells at both ends of
    each tiled dim ((t + 1) / feather at cell t), unless the tile is no longer than that."""
    mask = torch.ones(shape)
    for d, feather in enumerate(feathers, start=2):
        n = shape[d]
        if feather >= n:
            continue
        ramp = torch.ones(n)
        fade = torch.arange(1, feather + 1, dtype=torch.float32) / feather
        ramp[:feather] *= fade
        ramp[n - feather:] *= fade.flip(0)
        mask = mask * ramp.view(*([1] * d), n, *([1] * (len(shape) - d - 1)))
    return mask


def tiled_scale_multidim(samples: torch.Tensor, function: Callable, tile=(64, 64), overlap=8, upscale_amount=4,
                         out_channels: int = 3, output_device="cpu", downscale: bool = False, index_formulas=None,
                         pbar=None) -> torch.Tensor:
    """Run ``function`` over overlapping tiles of ``samples`` (B, C, *dims), one tile size per
    dim, and average the results weighted by feathered masks (ComfyUI's tiler, which video
    VAEs use). ``upscale_amount``/``index_formulas`` per dim: a factor (divided by when
    ``downscale``) or a function of a length/position."""
    dims = len(tile)
    amounts, overlap = _per_dim(upscale_amount, dims), _per_dim(overlap, dims)
    formulas = _per_dim(amounts if index_formulas is None else index_formulas, dims)

    def scaled(table, d, value):
        f = table[d]
        return f(value) if callable(f) else (value / f if downscale else f * value)

    def out_shape(shape):
        return [round(scaled(amounts, d, n)) for d, n in enumerate(shape)]

    output = torch.empty([samples.shape[0], out_channels] + out_shape(samples.shape[2:]), device=output_device)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        sizes = s.shape[2:]
        if all(sizes[d] <= tile[d] for d in range(dims)):
            output[b:b + 1] = function(s).to(output_device)
            if pbar is not None:
                pbar.update(1)
            continue
        total = torch.zeros([1, out_channels] + out_shape(sizes), device=output_device)
        weight = torch.zeros_like(total)
        starts = [range(0, sizes[d] - overlap[d], tile[d] - overlap[d]) if sizes[d] > tile[d] else [0]
                  for d in range(dims)]
        for corner in itertools.product(*starts):
            piece, at = s, []
            for d, start in enumerate(corner):
                start = max(0, min(sizes[d] - overlap[d], start))
                piece = piece.narrow(d + 2, start, min(tile[d], sizes[d] - start))
                at.append(round(scaled(formulas, d, start)))
            result = function(piece).to(output_device)
            mask = _tile_mask(result.shape, [round(scaled(amounts, d, overlap[d])) for d in range(dims)]).to(result)
            t, w = total, weight
            for d in range(dims):
                t, w = t.narrow(d + 2, at[d], mask.shape[d + 2]), w.narrow(d + 2, at[d], mask.shape[d + 2])
            t.add_(result * mask)
            w.add_(mask)
            if pbar is not None:
                pbar.update(1)
        output[b:b + 1] = total / weight
    return output


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

    if ckpt is None:  # what folder_paths.get_full_path gives for a name it does not find
        raise TypeError("comfy.utils.load_torch_file: no file (None): the name was not found in its model folder")
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
