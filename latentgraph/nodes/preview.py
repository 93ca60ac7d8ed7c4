"""Cheap step previews: the denoised latent through a linear latent-to-RGB projection (per
family constants, the same ones ComfyUI uses), as a small PIL image."""

from __future__ import annotations

from typing import Callable

from ..graph.lazy import lazy
torch = lazy("torch")
from PIL import Image

# (4 latent channels -> RGB) weights and bias, for latents in the sampler's (scaled) space
_RGB = {
    "sd": (((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0)),
    "sdxl": (((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
    # Playground v2.5's latent format (its own mean and std: another sampling space)
    "sdxl_playground_2_5": (((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                             (-0.3112, -0.2359, -0.2076)), (0.0, 0.0, 0.0)),
}


def preview_factory(family: str) -> Callable[[torch.Tensor], Image.Image]:
    """A function turning a denoised latent (B, 4, h, w) into an RGB preview of its first image;
    ``family``: a family name, or a latent format's name that has its own factors."""
    factors, bias = _RGB[family if family in _RGB else "sdxl" if family.startswith("sdxl") else "sd"]
    weight = torch.tensor(factors).t()  # (3, 4)
    b = torch.tensor(bias)

    def preview(denoised: torch.Tensor) -> Image.Image:
        x = denoised[0].detach().float().cpu().movedim(0, -1)  # (h, w, 4)
        rgb = torch.nn.functional.linear(x, weight, b)
        pixels = ((rgb + 1.0) / 2.0).clamp(0, 1).mul(255).to(torch.uint8).numpy()
        return Image.fromarray(pixels)

    return preview
