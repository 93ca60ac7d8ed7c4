"""ComfyUI's experimental latent operations: a LATENT_OPERATION is a function
``operation(latent=Tensor) -> Tensor`` that LatentApplyOperation applies to a LATENT and
LatentApplyOperationCFG applies during sampling, to the guidance (cond - uncond) before CFG
(a sampler_pre_cfg_function). Two operations: Reinhard tone mapping of the vector lengths, and
sharpening of the directions."""

from __future__ import annotations

from typing import Annotated, Callable

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import LATENT, MODEL, Float, Int, Output, Socket, node
from .images_extra import sharpen_kernel
from .sd import SDModel

Tensor = lazy("torch", "Tensor")
LATENT_OPERATION = "LATENT_OPERATION"
_MODULE = "comfy_extras.nodes_latent"
_CATEGORY = "latent/advanced/operations"


@node(category=_CATEGORY, outputs=[LATENT], python_module=_MODULE, experimental=True)
def LatentApplyOperation(samples: Annotated[dict, LATENT],
                         operation: Annotated[Callable, Socket(LATENT_OPERATION, extra={})]) -> dict:
    """Applies the operation to the latent's samples."""
    out = dict(samples)
    out["samples"] = operation(latent=samples["samples"])
    return out


@node(category=_CATEGORY, outputs=[MODEL], python_module=_MODULE, experimental=True)
def LatentApplyOperationCFG(model: Annotated[SDModel, MODEL],
                            operation: Annotated[Callable, Socket(LATENT_OPERATION, extra={})]) -> SDModel:
    """Applies the operation at every step before CFG: to cond - uncond (then adds uncond back),
    or to the cond alone when there is no uncond (cfg 1)."""
    m = model.clone()

    def pre_cfg(args: dict) -> list:
        conds_out = args["conds_out"]
        if len(conds_out) == 2:
            conds_out[0] = operation(latent=conds_out[0] - conds_out[1]) + conds_out[1]
        else:
            conds_out[0] = operation(latent=conds_out[0])
        return conds_out

    m.set_model_sampler_pre_cfg_function(pre_cfg)
    return m


def tonemap_reinhard(latent: Tensor, multiplier: float) -> Tensor:
    """Compresses the lengths of the per-pixel channel vectors with Reinhard's x / (1 + x),
    scaled so that mean + 5 std of each item's lengths (times multiplier) is the white point."""
    length = (torch.linalg.vector_norm(latent, dim=1) + 1e-10)[:, None]  # (B, 1, H, W)
    direction = latent / length
    top = (length.std(dim=(1, 2, 3), keepdim=True) * 5 + length.mean(dim=(1, 2, 3), keepdim=True)) * multiplier
    scaled = length / top
    return direction * (scaled / (scaled + 1.0) * top)


@node(category=_CATEGORY, outputs=[LATENT_OPERATION], python_module=_MODULE, experimental=True)
def LatentOperationTonemapReinhard(multiplier: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01)]):
    """The Reinhard tone-mapping operation."""
    def operation(latent: Tensor, **kwargs) -> Tensor:
        return tonemap_reinhard(latent, multiplier)
    return operation


def sharpen_latent(latent: Tensor, radius: int, sigma: float, alpha: float) -> Tensor:
    """Sharpens the unit directions of the channel vectors (the image sharpening kernel over
    reflected edges) and restores their lengths. A latent no bigger than the radius cannot be
    reflected (ComfyUI fails there): its edges are repeated instead."""
    length = (torch.linalg.vector_norm(latent, dim=1) + 1e-6)[:, None]
    direction = latent / length
    c, (h, w) = latent.shape[1], latent.shape[-2:]
    kernel = sharpen_kernel(radius, sigma, alpha).to(latent)
    mode = "reflect" if radius < min(h, w) else "replicate"
    padded = F.pad(direction, (radius,) * 4, mode=mode)
    return length * F.conv2d(padded, kernel.expand(c, 1, *kernel.shape), groups=c)


@node(category=_CATEGORY, outputs=[LATENT_OPERATION], python_module=_MODULE, experimental=True)
def LatentOperationSharpen(sharpen_radius: Annotated[int, Int(9, min=1, max=31, step=1)],
                           sigma: Annotated[float, Float(1.0, min=0.1, max=10.0, step=0.1)],
                           alpha: Annotated[float, Float(0.1, min=0.0, max=5.0, step=0.01)]):
    """The sharpening operation."""
    def operation(latent: Tensor, **kwargs) -> Tensor:
        return sharpen_latent(latent, sharpen_radius, sigma, alpha)
    return operation
