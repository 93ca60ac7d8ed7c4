"""ComfyUI's ``latent_preview``: the sampling callback that reports progress to the running node."""

from __future__ import annotations

from comfy.cli_args import LatentPreviewMethod, args  # ComfyUI's module has both (Efficiency sets them)
from latentgraph.comfy_compat import runtime

__all__ = ["MAX_PREVIEW_RESOLUTION", "TAESD", "LatentPreviewMethod", "Latent2RGBPreviewer", "LatentPreviewer",
           "TAESDPreviewerImpl", "args", "get_previewer", "prepare_callback", "preview_to_image"]

MAX_PREVIEW_RESOLUTION = 512  # ComfyUI's --preview-size default


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class LatentPreviewer:
    """The base of ComfyUI's previewers, which packs subclass (VHS's animated previews): a
    subclass gives ``decode_latent_to_preview(x0)``. latentgraph's own sampling nodes make
    their previews themselves; ``get_previewer`` gives packs none."""

    def decode_latent_to_preview(self, x0):
        pass

    def decode_latent_to_preview_image(self, preview_format, x0):
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


def preview_to_image(latent_image):
    """An (H, W, 3) preview in -1..1 as a PIL image (ComfyUI's 8-bit mapping)."""
    import torch
    from PIL import Image

    ubyte = ((latent_image + 1.0) / 2.0).clamp(0, 1).mul(0xFF).to(device="cpu", dtype=torch.uint8)
    return Image.fromarray(ubyte.numpy())


class Latent2RGBPreviewer(LatentPreviewer):
    """A preview from a latent by a linear map of its channels to RGB (the factors a latent
    format gives: ``latent_rgb_factors``, (C, 3), and an optional bias)."""

    def __init__(self, latent_rgb_factors, latent_rgb_factors_bias=None):
        import torch

        self.latent_rgb_factors = torch.tensor(latent_rgb_factors, device="cpu").transpose(0, 1)
        self.latent_rgb_factors_bias = (torch.tensor(latent_rgb_factors_bias, device="cpu")
                                        if latent_rgb_factors_bias is not None else None)

    def decode_latent_to_preview(self, x0):
        import torch

        weight = self.latent_rgb_factors.to(dtype=x0.dtype, device=x0.device)
        bias = self.latent_rgb_factors_bias
        bias = bias.to(dtype=x0.dtype, device=x0.device) if bias is not None else None
        first = x0[0, :, 0] if x0.ndim == 5 else x0[0]  # the first image (of a video, its first frame)
        return preview_to_image(torch.nn.functional.linear(first.movedim(0, -1), weight, bias))


class TAESDPreviewerImpl(LatentPreviewer):
    """A preview decoded by a TAESD-style decoder object (its ``decode``)."""

    def __init__(self, taesd):
        self.taesd = taesd

    def decode_latent_to_preview(self, x0):
        return preview_to_image(self.taesd.decode(x0[:1])[0].movedim(0, 2))


class TAESD:
    """ComfyUI's tiny autoencoder class, for import: its encoder/decoder pair is not rebuilt
    here (latentgraph's own samplers preview through latentgraph/models/taesd.py), so making one
    names it as missing (packs that use it only when a vae_approx file exists load)."""

    def __init__(self, *args, **kwargs):
        raise runtime.missing(__name__, "TAESD")


def prepare_callback(model, steps: int, x0_output_dict: dict | None = None):
    """A k-diffusion style callback ``(step, x0, x, total_steps)`` that ticks the running
    node's progress (and keeps the last x0 in ``x0_output_dict['x0']`` when given)."""
    from comfy.utils import ProgressBar  # the tree's own module, as ComfyUI's does

    bar = ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)
    return callback


def get_previewer(device, latent_format):
    return None
