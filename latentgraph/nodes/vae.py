"""VAE nodes: pixels <-> latents with ComfyUI's names, inputs and conventions (IMAGE
(B, H, W, C) in 0..1; LATENT samples unscaled; pixels seen by the VAE as x*2-1)."""

from __future__ import annotations

import math
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import IMAGE, LATENT, MASK, VAE, Int, node
crop_to_multiple = lazy("..models.latent", "crop_to_multiple")
decode_latent = lazy("..models.latent", "decode_latent")
encode_image = lazy("..models.latent", "encode_image")
from .budget import check_tensor
from .sd import VAEModel

Tensor = lazy("torch", "Tensor")


def _decode(vae: VAEModel, samples: Tensor, tiled: bool = False, tile: int = 64, overlap: int = 8) -> Tensor:
    if samples.ndim != 4 or samples.shape[1] != vae.vae.config.embed_dim:
        raise ValueError(f"this VAE decodes latents of {vae.vae.config.embed_dim} channels, got shape "
                         f"{tuple(samples.shape)}")
    b, _, h, w = samples.shape
    f = vae.downscale
    check_tensor((b, h * f, w * f, 3), f"a latent batch of {b} of {w} x {h} (decoded {f}x larger)", "an image")
    return decode_latent(vae.vae, samples, vae.placement, tiled, tile, overlap)


@node(category="latent", display_name="VAE Decode", outputs=[IMAGE])
def VAEDecode(samples: Annotated[dict, LATENT(tooltip="The latent to be decoded.")],
              vae: Annotated[VAEModel, VAE(tooltip="The VAE model used for decoding the latent.")]) -> Tensor:
    """Decodes latent images back into pixel space images."""
    return _decode(vae, samples["samples"])


@node(category="latent", display_name="VAE Encode", outputs=[LATENT])
def VAEEncode(pixels: Annotated[Tensor, IMAGE], vae: Annotated[VAEModel, VAE]) -> dict:
    """Encodes pixel images into latents (the posterior mean), cropped to multiples of 8."""
    return {"samples": encode_image(vae.vae, pixels, vae.placement)}


@node(category="_for_testing", display_name="VAE Decode (Tiled)", outputs=[IMAGE])
def VAEDecodeTiled(
    samples: Annotated[dict, LATENT],
    vae: Annotated[VAEModel, VAE],
    tile_size: Annotated[int, Int(512, min=64, max=4096, step=32)],
    overlap: Annotated[int, Int(64, min=0, max=4096, step=32)],
    temporal_size: Annotated[int, Int(64, min=8, max=4096, step=4, tooltip="Only used for video VAEs.")],
    temporal_overlap: Annotated[int, Int(8, min=4, max=4096, step=4, tooltip="Only used for video VAEs.")],
) -> Tensor:
    """Decodes in tiles of tile_size pixels, so large images fit in memory."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    f = vae.downscale
    return _decode(vae, samples["samples"], tiled=True, tile=tile_size // f, overlap=overlap // f)


@node(category="_for_testing", display_name="VAE Encode (Tiled)", outputs=[LATENT])
def VAEEncodeTiled(
    pixels: Annotated[Tensor, IMAGE],
    vae: Annotated[VAEModel, VAE],
    tile_size: Annotated[int, Int(512, min=64, max=4096, step=64)],
    overlap: Annotated[int, Int(64, min=0, max=4096, step=32)],
    temporal_size: Annotated[int, Int(64, min=8, max=4096, step=4, tooltip="Only used for video VAEs.")],
    temporal_overlap: Annotated[int, Int(8, min=4, max=4096, step=4, tooltip="Only used for video VAEs.")],
) -> dict:
    """Encodes in tiles of tile_size pixels, so large images fit in memory."""
    return {"samples": encode_image(vae.vae, pixels, vae.placement, tiled=True, tile=tile_size, overlap=overlap)}


@node(category="latent/inpaint", display_name="VAE Encode (for Inpainting)", outputs=[LATENT])
def VAEEncodeForInpaint(
    pixels: Annotated[Tensor, IMAGE],
    vae: Annotated[VAEModel, VAE],
    mask: Annotated[Tensor, MASK],
    grow_mask_by: Annotated[int, Int(6, min=0, max=64, step=1)],
) -> dict:
    """Encodes the image with the masked region set to grey, and carries the mask (grown by
    a few pixels) as the latent's noise mask, for inpainting models."""
    f = vae.downscale
    H, W = pixels.shape[1], pixels.shape[2]
    batch = max(pixels.shape[0], mask.reshape(-1, *mask.shape[-2:]).shape[0])
    check_tensor((batch, 1, H, W), f"a mask resized to the pixels' {W} x {H} for a batch of {batch}", "a mask")
    m = F.interpolate(mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float(), size=(H, W), mode="bilinear")
    h, w = H // f * f, W // f * f
    top, left = (H % f) // 2, (W % f) // 2
    pixels = pixels[:, top:top + h, left:left + w].clone()
    m = m[:, :, top:top + h, left:left + w]
    if grow_mask_by == 0:
        grown = m
    else:
        kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by))
        pad = math.ceil((grow_mask_by - 1) / 2)
        grown = torch.clamp(F.conv2d(m.round(), kernel, padding=pad), 0, 1)
    keep = (1.0 - m.round()).squeeze(1)  # (B, h, w): 1 where the image stays
    pixels[..., :3] = (pixels[..., :3] - 0.5) * keep[..., None] + 0.5
    samples = encode_image(vae.vae, pixels, vae.placement)
    return {"samples": samples, "noise_mask": grown[:, :, :h, :w].round()}
