"""InstructPixToPixConditioning: ComfyUI's set-up for InstructPix2Pix models (Brooks et al.
2023, "InstructPix2Pix: Learning to Follow Image Editing Instructions"). Their UNet takes 8
channels: the noisy latent and the latent of the image to edit. The node encodes the image into
every conditioning entry (``concat_latent_image``, the VAE's unscaled latent) and gives an empty
latent of its size to sample; ``ip2p_concat`` (called from nodes/sd.py cond_concat) makes the
UNet's extra channels from it. Guidance is ComfyUI's: plain 2-way CFG with the image in both the
positive and the negative (DualCFGGuider gives the paper's 3-way guidance)."""

from __future__ import annotations

import math
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")

from ..graph import CONDITIONING, IMAGE, VAE, Output, node
encode_image = lazy("..models.latent", "encode_image")
from .sd import VAEModel

Tensor = lazy("torch", "Tensor")
SDXL_SCALE = 0.13025  # CosXL-edit reads the image latent in SDXL's scaled space


@node(category="conditioning/instructpix2pix", display_name="InstructPixToPixConditioning",
      outputs=[Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"),
               Output("LATENT", name="latent")], python_module="comfy_extras.nodes_ip2p")
def InstructPixToPixConditioning(
    positive: Annotated[list, CONDITIONING],
    negative: Annotated[list, CONDITIONING],
    vae: Annotated[VAEModel, VAE],
    pixels: Annotated[Tensor, IMAGE],
) -> tuple[list, list, dict]:
    """Encodes the image to edit (centre-cropped to multiples of 8) into both conditionings;
    the latent to sample is zeros of its size."""
    image = encode_image(vae.vae, pixels, vae.placement)  # (B, 4, H/8, W/8), unscaled
    out = [[[t, {**opts, "concat_latent_image": image}] for t, opts in cond] for cond in (positive, negative)]
    return out[0], out[1], {"samples": torch.zeros_like(image)}


def resize_to_batch(t: Tensor, batch: int) -> Tensor:
    """ComfyUI's rule for fitting a batch of n to ``batch``: pick items spread evenly over the n
    (the nearest item to each of ``batch`` evenly spaced positions)."""
    n = t.shape[0]
    if n == batch:
        return t
    if batch <= 1:
        return t[:batch]
    if batch < n:
        index = [min(round(i * (n - 1) / (batch - 1)), n - 1) for i in range(batch)]
    else:
        index = [min(math.floor((i + 0.5) * n / batch), n - 1) for i in range(batch)]
    return t[index]


def ip2p_concat(model, image: Tensor | None, latent_shape: torch.Size, device: torch.device) -> Tensor:
    """The 4 extra input channels of an InstructPix2Pix UNet for a latent of ``latent_shape``:
    the entry's image latent (bilinear, centre-cropped to the latent's size; its batch fitted),
    or zeros when the conditioning has none, as ComfyUI. The image stays unscaled, except for an
    SDXL model with continuous v-prediction sigmas (CosXL-edit), which reads it scaled."""
    from .image import upscale  # nodes.image imports nothing of sd: no cycle, but keep it local

    b, _, h, w = latent_shape
    if image is None:
        return torch.zeros((b, 4, h, w), device=device)
    image = image.to(device, torch.float32)
    if image.shape[1:] != (4, h, w):
        image = upscale(image, w, h, "bilinear", "center")
    image = resize_to_batch(image, b)
    arch = model.arch
    if arch.family == "sdxl" and arch.sigma_range is not None and arch.prediction == "v":
        image = image * SDXL_SCALE
    return image
