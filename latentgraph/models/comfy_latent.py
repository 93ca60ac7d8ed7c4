"""ComfyUI's latent format classes (comfy.latent_formats) that are also latentgraph's
LatentFormat (sampling/schedule.py), so a pack's format works wherever ours does and ours
answer ComfyUI's attribute names (``scale_factor``, ``latent_channels``, ``latent_rgb_factors``)."""

from __future__ import annotations

import torch

from ..sampling.schedule import LatentFormat as _OurLatentFormat


class LatentFormat(_OurLatentFormat):
    """ComfyUI's LatentFormat (class attributes ``scale_factor``, ``latent_channels``, ...;
    ``process_in``/``process_out``) that is also latentgraph's (``scale``, ``mean``, ``std``)."""

    scale_factor = 1.0
    latent_channels = 4
    latent_dimensions = 2
    latent_rgb_factors = None
    latent_rgb_factors_bias = None
    taesd_decoder_name = None
    latents_mean = None  # (1, C, 1, 1) tensors where the format shifts each channel
    latents_std = None

    def __init__(self):  # everything is read from the class (or what a subclass's __init__ sets)
        pass

    scale = property(lambda self: float(self.scale_factor))
    mean = property(lambda self: None if self.latents_mean is None else tuple(self.latents_mean.flatten().tolist()))
    std = property(lambda self: None if self.latents_std is None else tuple(self.latents_std.flatten().tolist()))
    name = property(lambda self: type(self).__name__.lower())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale_factor={self.scale_factor})"


class SD15(LatentFormat):
    """SD1.x and SD2.x latents (the SD VAE's space)."""

    taesd_decoder_name = "taesd_decoder"
    # the preview factors are ComfyUI's (the same table as nodes/preview.py's "sd")
    latent_rgb_factors = [[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721],
                          [-0.2120, -0.2616, -0.7177]]

    def __init__(self, scale_factor: float = 0.18215):
        self.scale_factor = scale_factor


class SDXL(LatentFormat):
    scale_factor = 0.13025
    taesd_decoder_name = "taesdxl_decoder"
    latent_rgb_factors = [[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362],
                          [-0.3165, -0.2492, -0.2188]]
    latent_rgb_factors_bias = [0.1084, -0.0175, -0.0011]


class SDXL_Playground_2_5(LatentFormat):
    """Playground v2.5: SDXL's VAE, each channel shifted and scaled by its own mean and std."""

    scale_factor = 0.5
    taesd_decoder_name = "taesdxl_decoder"
    latent_rgb_factors = [[0.3920, 0.4054, 0.4549], [-0.2634, -0.0196, 0.0653], [0.0568, 0.1687, -0.0755],
                          [-0.3112, -0.2359, -0.2076]]
    name = property(lambda self: "sdxl_playground_2_5")

    def __init__(self):
        self.latents_mean = torch.tensor([-1.6574, 1.886, -1.383, 2.5155]).view(1, 4, 1, 1)
        self.latents_std = torch.tensor([8.4927, 5.9022, 6.5498, 5.2299]).view(1, 4, 1, 1)


def comfy_latent_format(fmt: _OurLatentFormat) -> LatentFormat:
    """ComfyUI's class for one of our formats (SDXL's and SD's scales, Playground v2.5's stats)."""
    if isinstance(fmt, LatentFormat):
        return fmt
    if fmt.mean is not None:
        if fmt.name == "sdxl_playground_2_5":
            return SDXL_Playground_2_5()
        raise ValueError(f"latent format {fmt!r} has no ComfyUI counterpart")
    return SDXL() if fmt.scale == SDXL.scale_factor else SD15(fmt.scale)
