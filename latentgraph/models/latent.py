"""Latent conventions, as ComfyUI's: IMAGE is (B, H, W, C) float in 0..1; LATENT samples are
unscaled VAE space (the sampler applies the family's scale factor on the way in and out);
the VAE sees pixels as x*2-1 and its output is mapped back with clamp((x+1)/2, 0, 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .management import Placement
from .vae import AutoencoderKL


def crop_to_multiple(image: torch.Tensor, factor: int) -> torch.Tensor:
    """Centre-crop IMAGE (B, H, W, C) so H and W are multiples of ``factor`` (as VAEEncode does)."""
    h, w = image.shape[1], image.shape[2]
    nh, nw = h // factor * factor, w // factor * factor
    if (nh, nw) == (h, w):
        return image
    if nh == 0 or nw == 0:
        raise ValueError(f"an image of {w}x{h} pixels is smaller than the VAE's factor {factor}")
    top, left = (h % factor) // 2, (w % factor) // 2
    return image[:, top:top + nh, left:left + nw]


@torch.no_grad()
def encode_image(vae: AutoencoderKL, image: torch.Tensor, placement: Placement | None = None,
                 tiled: bool = False, tile: int = 512, overlap: int = 64) -> torch.Tensor:
    """IMAGE (B, H, W, C) 0..1 -> LATENT samples (B, 4, H/8, W/8), float32 on the CPU.
    Only the first three channels are used (an alpha channel is dropped)."""
    placement = placement or Placement()
    image = crop_to_multiple(image[..., :3], vae.downscale)
    tiled = tiled or placement.prefer_tiled  # the last try after running out of device memory
    with placement.use(vae):
        device = _device_of(vae, placement)
        x = image.movedim(-1, 1).to(device=device, dtype=vae.dtype) * 2.0 - 1.0  # (B, 3, H, W)
        z = vae.encode_tiled(x, tile, overlap) if tiled else vae.encode(x)
    return z.float().cpu()


@torch.no_grad()
def decode_latent(vae: AutoencoderKL, samples: torch.Tensor, placement: Placement | None = None,
                  tiled: bool = False, tile: int = 64, overlap: int = 8) -> torch.Tensor:
    """LATENT samples (B, 4, h, w) -> IMAGE (B, 8h, 8w, 3) in 0..1, float32 on the CPU."""
    placement = placement or Placement()
    tiled = tiled or placement.prefer_tiled  # the last try after running out of device memory
    with placement.use(vae):
        device = _device_of(vae, placement)
        z = samples.to(device=device, dtype=vae.dtype)
        x = vae.decode_tiled(z, tile, overlap) if tiled else vae.decode(z)
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1).cpu()


def _device_of(vae: AutoencoderKL, placement: Placement) -> torch.device:
    """Where the VAE computes: the placement's device under a memory manager (a VAE loaded in
    part has some weights in RAM between layers), else where its weights are."""
    return placement.device if placement.memory is not None else next(vae.parameters()).device


def crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Centre-crop (..., H, W) to the aspect ratio of width x height, as ComfyUI's crop="center":
    the margin is rounded once and taken from both sides."""
    h, w = samples.shape[-2:]
    src, dst = w / h, width / height
    x = y = 0
    if src > dst:
        x = round((w - w * (dst / src)) / 2)
    elif src < dst:
        y = round((h - h * (src / dst)) / 2)
    return samples[..., y:h - y, x:w - x]


def upscale_center(image: torch.Tensor, width: int, height: int, mode: str = "nearest-exact") -> torch.Tensor:
    """(B, C, H, W) cropped about the centre to the target aspect ratio, then resized
    (ComfyUI's common_upscale with crop "center"): how control hints are sized."""
    return F.interpolate(crop_to_aspect(image, width, height), size=(height, width), mode=mode)
