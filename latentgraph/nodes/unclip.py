"""unCLIP nodes with ComfyUI's names and inputs: load an SD2.1-unCLIP checkpoint with its CLIP
image encoder, and add a CLIP image embedding to conditioning (read by SD2.1-unCLIP models as
their y, and by SDXL as Revision: in place of the pooled text; models/unclip.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from ..graph import CONDITIONING, Combo, Float, NodeContext, node
from ..graph.lazy import lazy
file_key = lazy("..models.checkpoint", "file_key")
load_placed = lazy("..models.checkpoint", "load_placed")
load_unclip_vision = lazy("..models.checkpoint", "load_unclip_vision")
TextModel = lazy("..models.clip", "TextModel")
ClipVisionOutput = lazy("..models.clip_vision", "ClipVisionOutput")
from .clip_vision import CLIP_VISION_OUTPUT
from .loaders import _ckpt_check, _ckpt_key, model_files, services
from .sd import SDModel, VAEModel, schedule_for

Cond = Any


class MissingClipVision:
    """What unCLIPCheckpointLoader's CLIP_VISION output carries for a checkpoint without an image
    encoder (ComfyUI gives None there and fails later in some node): using it as a CLIP vision
    model (encode_image, to, config, ...) raises, naming the file."""

    latentgraph_nbytes = 0  # for the result cache's size estimate: holds no tensors

    def __init__(self, source: str):
        self.source = source

    def _fail(self, *_, **__):
        raise ValueError(f"{self.source}: this checkpoint has no CLIP image encoder (no embedder.model.visual.* "
                         f"tensors), so unCLIPCheckpointLoader's CLIP_VISION output is empty: load one with "
                         f"CLIPVisionLoader instead")

    encode_image = work_shapes = to = parameters = _fail
    config = model = image_size = property(_fail)


@node(category="loaders", display_name="unCLIPCheckpointLoader",
      outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("CLIP_VISION", "CLIP_VISION")],
      fingerprint=_ckpt_key, validate=_ckpt_check)
def unCLIPCheckpointLoader(ckpt_name: Annotated[str, Combo(model_files("checkpoints"))], ctx: NodeContext) -> tuple:
    """Loads a checkpoint (an SD2.1-unCLIP one, or any other CheckpointLoaderSimple reads) and the
    CLIP image encoder stored in it (embedder.model.visual.*)."""
    placement, cache = services(ctx)
    path = ctx.env.find_model("checkpoints", ckpt_name)
    ck = load_placed(path, placement, cache)
    model = SDModel(ck.unet, ck.arch, schedule_for(ck.arch), placement)
    clip = TextModel(ck.arch, ck.text, placement, embedding_dirs=tuple(ctx.env.folders("embeddings")))

    def load_vision():
        vision = load_unclip_vision(path, placement.dtypes["text"])  # placed as text encoders, as ComfyUI
        return MissingClipVision(str(path)) if vision is None else vision.to(placement.home)

    vision = cache.get_or_load(("unclip_vision", *file_key(path), placement.key()), load_vision)
    return model, clip, VAEModel(ck.vae, placement), vision


@node(category="conditioning", display_name="unCLIPConditioning", outputs=[CONDITIONING])
def unCLIPConditioning(
    conditioning: Annotated[Cond, CONDITIONING],
    clip_vision_output: Annotated[ClipVisionOutput, CLIP_VISION_OUTPUT],
    strength: Annotated[float, Float(1.0, min=-10.0, max=10.0, step=0.01)],
    noise_augmentation: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.01)],
) -> list:
    """Appends an image embedding (strength, noise augmentation) to each entry's
    ``unclip_conditioning`` list; strength 0 returns the conditioning unchanged."""
    if strength == 0:
        return conditioning
    if getattr(clip_vision_output, "image_embeds", None) is None:
        raise ValueError("unCLIPConditioning: clip_vision_output has no image_embeds (a CLIP vision model without "
                         "a projection?)")
    entry = {"clip_vision_output": clip_vision_output, "strength": strength, "noise_augmentation": noise_augmentation}
    out = []
    for tensor, opts in conditioning:
        opts = dict(opts)
        opts["unclip_conditioning"] = [*opts.get("unclip_conditioning", []), entry]
        out.append([tensor, opts])
    return out

