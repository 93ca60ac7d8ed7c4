"""Latent nodes with ComfyUI's names, inputs and bookkeeping.

LATENT is a dict: ``samples`` (B, 4, H/8, W/8) in unscaled VAE space, and optionally
``noise_mask`` (B or 1, 1, H, W) and ``batch_index`` (list[int], which noise each item takes).
Nodes copy the dict and replace only the keys they change, so other keys pass through, as in
ComfyUI; an input dict is never modified.
"""

from __future__ import annotations

import math
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import LATENT, MASK, Combo, Float, Int, Output, node
from .budget import check_tensor
from .image import CROP_METHODS, MAX_RESOLUTION, crop_to_aspect, upscale

Tensor = lazy("torch", "Tensor")
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")


def _slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between vectors a and b (..., C) by t (..., 1), with the length
    interpolated linearly. Nearly parallel pairs give a; nearly opposite ones a linear blend."""
    len_a = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    len_b = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    unit_a = torch.where(len_a == 0, 0.0, a / len_a)  # a zero vector has no direction: 0
    unit_b = torch.where(len_b == 0, 0.0, b / len_b)
    dot = (unit_a * unit_b).sum(-1, keepdim=True)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    out = torch.sin((1.0 - t) * omega) / sin_omega * unit_a + torch.sin(t * omega) / sin_omega * unit_b
    out = out * (len_a * (1.0 - t) + len_b * t)
    out = torch.where(dot > 1 - 1e-5, a, out)  # also where acos gave NaN for dot just above 1
    return torch.where(dot < 1e-5 - 1, a * (1.0 - t) + b * t, out)


def _bilinear_taps(n_old: int, n_new: int) -> tuple[Tensor, Tensor, Tensor]:
    """Along one axis resized from n_old to n_new: for each new position the two source indices
    and the weight of the second, placed exactly where bilinear interpolation
    (align_corners=False) places them; found by interpolating the index ramps themselves."""
    ramp = torch.arange(n_old, dtype=torch.float32).view(1, 1, 1, -1)
    pos = F.interpolate(ramp, size=(1, n_new), mode="bilinear")[0, 0, 0]  # fractional source index
    upper = F.interpolate((ramp + 1).clamp(max=n_old - 1), size=(1, n_new), mode="bilinear")[0, 0, 0]
    return pos.long(), upper.long(), pos - pos.floor()


def bislerp(samples: Tensor, width: int, height: int) -> Tensor:
    """Bilinear resize of (B, C, H, W) that slerps between neighbouring latent vectors (over C)
    instead of blending them linearly: along the width first, then along the height."""
    dtype = samples.dtype
    x = samples.float().movedim(1, -1).contiguous()  # (B, H, W, C)
    lo, hi, t = _bilinear_taps(x.shape[2], width)
    x = _slerp(x[:, :, lo], x[:, :, hi], t[:, None])  # (B, H, width, C)
    lo, hi, t = _bilinear_taps(x.shape[1], height)
    x = _slerp(x[:, lo], x[:, hi], t[:, None, None])  # (B, height, width, C)
    return x.movedim(-1, 1).to(dtype)


def check_latent_resize(samples: Tensor, width: int, height: int, what: str) -> None:
    """Refuse (tensor_bytes) to resize latents (B, C, H, W) to width x height latent pixels when
    the result would be too big; ``what`` says which inputs gave the size."""
    b, c = samples.shape[:2]
    check_tensor((b, c, height, width), f"{what} for a batch of {b}", "a latent")


def upscale_latent(samples: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize (B, C, H, W) to width x height (latent pixels) with any of LATENT_UPSCALE_METHODS."""
    if method != "bislerp":
        return upscale(samples, width, height, method, crop)
    if crop == "center":
        samples = crop_to_aspect(samples, width, height)
    return bislerp(samples, width, height)


@node(category="latent", display_name="Empty Latent Image",
      outputs=[Output("LATENT", tooltip="The empty latent image batch.")])
def EmptyLatentImage(
    width: Annotated[int, Int(512, min=16, max=MAX_RESOLUTION, step=8,
                              tooltip="The width of the latent images in pixels.")],
    height: Annotated[int, Int(512, min=16, max=MAX_RESOLUTION, step=8,
                               tooltip="The height of the latent images in pixels.")],
    batch_size: Annotated[int, Int(1, min=1, max=4096, tooltip="The number of latent images in the batch.")],
) -> dict:
    """Create a new batch of empty latent images to be denoised via sampling."""
    check_tensor((batch_size, 4, height // 8, width // 8),
                 f"width {width} x height {height} x batch_size {batch_size}", "a latent")
    return {"samples": torch.zeros((batch_size, 4, height // 8, width // 8))}


@node(category="latent", display_name="Upscale Latent", outputs=[LATENT])
def LatentUpscale(
    samples: Annotated[dict, LATENT],
    upscale_method: Annotated[str, Combo(LATENT_UPSCALE_METHODS, default="nearest-exact")],
    width: Annotated[int, Int(512, min=0, max=MAX_RESOLUTION, step=8)],
    height: Annotated[int, Int(512, min=0, max=MAX_RESOLUTION, step=8)],
    crop: Annotated[str, Combo(CROP_METHODS, default="disabled")],
) -> dict:
    """Resizes latents to width x height pixels; a side of 0 keeps the aspect ratio.

    Sides are at least 64 pixels, as in ComfyUI."""
    out = dict(samples)
    if width == 0 and height == 0:
        return out
    h, w = samples["samples"].shape[-2:]
    if width == 0:
        height = max(64, height)
        width = max(64, round(w * height / h))
    elif height == 0:
        width = max(64, width)
        height = max(64, round(h * width / w))
    else:
        width, height = max(64, width), max(64, height)
    check_latent_resize(samples["samples"], width // 8, height // 8, f"width {width} x height {height}")
    out["samples"] = upscale_latent(samples["samples"], width // 8, height // 8, upscale_method, crop)
    return out


@node(category="latent", display_name="Upscale Latent By", outputs=[LATENT])
def LatentUpscaleBy(
    samples: Annotated[dict, LATENT],
    upscale_method: Annotated[str, Combo(LATENT_UPSCALE_METHODS, default="nearest-exact")],
    scale_by: Annotated[float, Float(1.5, min=0.01, max=8.0, step=0.01)],
) -> dict:
    """Resizes latents by a factor (each side rounded to whole latent pixels)."""
    h, w = samples["samples"].shape[-2:]
    width, height = round(w * scale_by), round(h * scale_by)
    check_latent_resize(samples["samples"], width, height,
                        f"scale_by {scale_by} ({w * 8} x {h * 8} to {width * 8} x {height * 8} pixels)")
    out = dict(samples)
    out["samples"] = upscale_latent(samples["samples"], width, height, upscale_method)
    return out


def _repeat_to(t: Tensor, n: int) -> Tensor:
    """Repeat a batch along dim 0 until it has at least n items, then cut to n."""
    return t.repeat((math.ceil(n / t.shape[0]),) + (1,) * (t.ndim - 1))[:n]


@node(category="latent/batch", display_name="Latent From Batch", outputs=[LATENT])
def LatentFromBatch(
    samples: Annotated[dict, LATENT],
    batch_index: Annotated[int, Int(0, min=0, max=63)],
    length: Annotated[int, Int(1, min=1, max=64)],
) -> dict:
    """Takes ``length`` items from a latent batch, starting at ``batch_index``.

    Both are clamped to the batch. The items keep their batch indices (``batch_index``), so
    sampling gives them the noise they had in the whole batch."""
    x = samples["samples"]
    start = min(x.shape[0] - 1, batch_index)
    if "noise_mask" in samples and samples["noise_mask"].shape[0] > 1:
        masks = samples["noise_mask"]  # cycled to the batch below, then cut
        check_tensor((x.shape[0], *masks.shape[1:]), f"a noise_mask of {tuple(masks.shape)} cycled to a batch "
                     f"of {x.shape[0]}", "a noise mask")
    length = min(x.shape[0] - start, length)
    out = dict(samples)
    out["samples"] = x[start:start + length].clone()
    if "noise_mask" in samples:
        masks = samples["noise_mask"]
        if masks.shape[0] > 1:  # one mask serves every item; a shorter batch of them is cycled
            if masks.shape[0] < x.shape[0]:
                masks = _repeat_to(masks, x.shape[0])
            masks = masks[start:start + length]
        out["noise_mask"] = masks.clone()
    if "batch_index" in samples:
        out["batch_index"] = samples["batch_index"][start:start + length]
    else:
        out["batch_index"] = list(range(start, start + length))
    return out


@node(category="latent/batch", display_name="Repeat Latent Batch", outputs=[LATENT])
def RepeatLatentBatch(
    samples: Annotated[dict, LATENT],
    amount: Annotated[int, Int(1, min=1, max=64)],
) -> dict:
    """Repeats the whole batch ``amount`` times.

    Batch indices of each repeat are shifted past the previous ones (by max - min + 1), so
    repeats get new noise."""
    x = samples["samples"]
    masks = samples.get("noise_mask")
    check_tensor((amount * x.shape[0], *x.shape[1:]), f"amount {amount} x a batch of {x.shape[0]}", "a latent")
    if masks is not None and masks.shape[0] > 1:
        check_tensor((amount * masks.shape[0], *masks.shape[1:]),
                     f"amount {amount} x a noise_mask batch of {masks.shape[0]}", "a noise mask")
    out = dict(samples)
    out["samples"] = x.repeat((amount,) + (1,) * (x.ndim - 1))
    if masks is not None and masks.shape[0] > 1:  # a single mask already serves every item
        out["noise_mask"] = masks.repeat((amount,) + (1,) * (masks.ndim - 1))
    if "batch_index" in samples:
        first = list(samples["batch_index"])
        offset = max(first) - min(first) + 1
        out["batch_index"] = first + [i + k * offset for k in range(1, amount) for i in first]
    return out


def _feather_mask(h: int, w: int, feather: int, top: bool, bottom: bool, left: bool, right: bool) -> Tensor:
    """(h, w) weights of the pasted latent: rising (t+1)/feather over ``feather`` rows or columns
    from each side that lies inside the destination, 1 elsewhere. Built in ComfyUI's order, one
    product at a time, so values are identical; a fade wider than half the patch overlaps (and
    from the far side its slice wraps, as Python slicing does)."""
    mask = torch.ones(h, w)
    for t in range(feather):
        f = (1.0 / feather) * (t + 1)
        if top:
            mask[t:t + 1] *= f
        if bottom:
            mask[h - 1 - t:h - t] *= f
        if left:
            mask[:, t:t + 1] *= f
        if right:
            mask[:, w - 1 - t:w - t] *= f
    return mask


@node(category="latent", display_name="Latent Composite", outputs=[LATENT])
def LatentComposite(
    samples_to: Annotated[dict, LATENT],
    samples_from: Annotated[dict, LATENT],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    feather: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
) -> dict:
    """Pastes samples_from into samples_to at (x, y), in pixels (multiples of 8).

    The patch is cut at the edges of samples_to; ``feather`` pixels fade the seams that lie
    inside it. A patch that falls wholly outside changes nothing."""
    x, y, feather = x // 8, y // 8, feather // 8
    dest, src = samples_to["samples"], samples_from["samples"]
    if src.shape[0] not in (1, dest.shape[0]):
        raise ValueError(f"samples_from has a batch of {src.shape[0]} and samples_to one of "
                         f"{dest.shape[0]}: they must match, or samples_from must have 1")
    out = dict(samples_to)
    result = dest.clone()
    h, w = dest.shape[-2:]
    src = src[:, :, :max(0, h - y), :max(0, w - x)]  # (B, C, ph, pw): what lies inside dest
    ph, pw = src.shape[-2:]
    if ph and pw:
        region = result[:, :, y:y + ph, x:x + pw]
        if feather:
            m = _feather_mask(ph, pw, feather, y != 0, y + ph < h, x != 0, x + pw < w).to(dest)
            region[:] = src.to(dest) * m + region * (1.0 - m)
        else:
            region[:] = src.to(dest)
    out["samples"] = result
    return out


@node(category="latent/inpaint", display_name="Set Latent Noise Mask", outputs=[LATENT])
def SetLatentNoiseMask(samples: Annotated[dict, LATENT], mask: Annotated[Tensor, MASK]) -> dict:
    """Limits sampling to where the mask is set (1 = resample); it is resized when sampled."""
    out = dict(samples)
    out["noise_mask"] = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    return out
