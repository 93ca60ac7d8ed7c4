"""Image preprocessors that turn a picture into a ControlNet / T2I-Adapter hint, with ComfyUI's
names, inputs and defaults (comfy_extras/nodes_canny.py)."""

from __future__ import annotations

from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")

from ..graph import IMAGE, Float, node
from .budget import check_tensor

Tensor = lazy("torch", "Tensor")


@node(category="image/preprocessors", outputs=[IMAGE], python_module="comfy_extras.nodes_canny")
def Canny(
    image: Annotated[Tensor, IMAGE],
    low_threshold: Annotated[float, Float(0.4, min=0.01, max=0.99, step=0.01)],
    high_threshold: Annotated[float, Float(0.8, min=0.01, max=0.99, step=0.01)],
) -> Tensor:
    """Canny edges (kornia's, as ComfyUI uses it): white edges on black, as a 3-channel IMAGE."""
    # kornia is imported here so that loading the node registry does not pay for it.
    from kornia.filters import canny

    if low_threshold > high_threshold:
        # kornia asserts this with a bare AssertionError; say which inputs and what to do.
        raise ValueError(f"Canny: low_threshold ({low_threshold}) must not be greater than "
                         f"high_threshold ({high_threshold})")
    batch, height, width, channels = image.shape
    if channels not in (1, 3):
        raise ValueError(f"Canny: image has {channels} channels; it takes 3 (RGB) or 1 (grey)")
    # kornia keeps about a dozen float32 maps of the image alive at once (grey, blurred, two
    # gradients, magnitude, angle, NMS, hysteresis): budget them before it allocates them.
    check_tensor((12, batch, 1, height, width), f"image of batch {batch} x {height} x {width}",
                 "Canny's working maps")
    # kornia wants [B, C, H, W]; a 3-channel image is turned grey inside it. Its second output is
    # the edge map [B, 1, H, W] in {0, 1} after hysteresis.
    _, edges = canny(image.movedim(-1, 1), low_threshold, high_threshold)
    # one output: the value itself (a 1-tuple would reach the next node as a tuple)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1)
