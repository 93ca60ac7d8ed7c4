"""InpaintModelConditioning: ComfyUI's inpainting set-up for any SD model. The latent is the
whole image encoded (with the mask as its noise mask), and each conditioning entry carries the
masked image (``concat_latent_image``) and the mask (``concat_mask``), which a 9-channel
inpainting UNet takes as extra input channels (nodes/sd.py, cond_concat); a plain model ignores
them and inpaints through the noise mask alone."""

from __future__ import annotations

from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import CONDITIONING, IMAGE, LATENT, MASK, VAE, Boolean, Output, node
encode_image = lazy("..models.latent", "encode_image")
from .budget import check_tensor
from .vae import VAEModel

Tensor = lazy("torch", "Tensor")


def _with(conditioning: list, **options) -> list:
    """A copy of every entry with ``options`` set (the input is never changed)."""
    return [[t, {**opts, **options}] for t, opts in conditioning]


@node(category="conditioning/inpaint", display_name="InpaintModelConditioning",
      outputs=[Output("CONDITIONING", name="positive"), Output("CONDITIONING", name="negative"),
               Output("LATENT", name="latent")])
def InpaintModelConditioning(
    positive: Annotated[list, CONDITIONING],
    negative: Annotated[list, CONDITIONING],
    vae: Annotated[VAEModel, VAE],
    pixels: Annotated[Tensor, IMAGE],
    mask: Annotated[Tensor, MASK],
    noise_mask: Annotated[bool, Boolean(True, tooltip="Add a noise mask to the latent so sampling will only "
                                                      "happen within the mask. Might improve results or completely "
                                                      "break things depending on the model.")],
) -> tuple[list, list, dict]:
    """Encodes the image and the image with the masked part made grey; both conditionings get
    the latter and the mask (resized to the image, centre-cropped to multiples of 8)."""
    b, height, width = pixels.shape[:3]
    masks = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    check_tensor((masks.shape[0], 1, height, width), f"a mask resized to the pixels' {width} x {height}", "a mask")
    if masks.shape[0] not in (1, b):
        raise ValueError(f"InpaintModelConditioning: a batch of {masks.shape[0]} masks for {b} images: "
                         f"give one mask, or one per image")
    masks = F.interpolate(masks.float(), size=(height, width), mode="bilinear")
    h, w = height // 8 * 8, width // 8 * 8
    top, left = (height % 8) // 2, (width % 8) // 2  # the same centred crop as the VAE's encoder
    cropped = pixels[:, top:top + h, left:left + w].clone()
    masks = masks[:, :, top:top + h, left:left + w]
    keep = (1.0 - masks.round())[:, 0, :, :, None]  # (B, h, w, 1): 1 where the image stays
    cropped[..., :3] = (cropped[..., :3] - 0.5) * keep + 0.5
    masked_latent = encode_image(vae.vae, cropped, vae.placement)
    latent = {"samples": encode_image(vae.vae, pixels, vae.placement)}
    if noise_mask:
        latent["noise_mask"] = masks
    extra = {"concat_latent_image": masked_latent, "concat_mask": masks}
    return _with(positive, **extra), _with(negative, **extra), latent
