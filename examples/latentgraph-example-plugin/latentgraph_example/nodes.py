"""The plugin's nodes, declared exactly as latentgraph's built-in nodes are: a function whose
typed signature is the node's schema. IMAGE is a float tensor [batch, height, width, 3] in 0..1."""

from typing import Annotated

import torch

from latentgraph.graph import IMAGE, Combo, Float, node

WEIGHTS = {"luma": (0.299, 0.587, 0.114), "average": (1 / 3, 1 / 3, 1 / 3)}


@node(category="example", display_name="Grayscale", outputs=["IMAGE"])
def Grayscale(image: Annotated[torch.Tensor, IMAGE],
              mode: Annotated[str, Combo(list(WEIGHTS), default="luma")]) -> torch.Tensor:
    """Turns an image gray: ITU-R 601 luma weights, or the plain average of the channels."""
    weights = torch.tensor(WEIGHTS[mode], dtype=image.dtype, device=image.device)
    gray = (image[..., :3] * weights).sum(-1, keepdim=True)
    return gray.expand(*gray.shape[:-1], 3).contiguous()


@node(category="example", display_name="Vignette", outputs=["IMAGE"])
def Vignette(image: Annotated[torch.Tensor, IMAGE],
             strength: Annotated[float, Float(0.5, min=0.0, max=1.0, step=0.01)]) -> torch.Tensor:
    """Darkens the corners: each pixel is scaled by 1 - strength * (its distance from the centre)^2,
    the distance being 1 at the corners."""
    _, h, w, _ = image.shape
    ys = torch.linspace(-1, 1, h, dtype=image.dtype, device=image.device)[:, None]
    xs = torch.linspace(-1, 1, w, dtype=image.dtype, device=image.device)[None, :]
    falloff = 1 - strength * (ys ** 2 + xs ** 2) / 2
    return image * falloff[None, :, :, None]
