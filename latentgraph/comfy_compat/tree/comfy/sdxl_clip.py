"""ComfyUI's ``comfy.sdxl_clip``: the classes of SDXL's text encoders and tokenizers inside a
ComfyUI CLIP (``clip.cond_stage_model``, ``clip.tokenizer``), for packs to import, subclass and
test against: making one is the layer's missing-name error, and ``clip.cond_stage_model`` of an
SDXL CLIP value is an SDXLClipModel, of a refiner's an SDXLRefinerClipModel (see comfy.sd1_clip)."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime

from comfy.sd1_clip import ComfyOnly, SD1ClipModel, SD1Tokenizer, SDClipModel, SDTokenizer  # the tree's own

__all__ = ["SDXLClipG", "SDXLClipGTokenizer", "SDXLClipModel", "SDXLRefinerClipModel", "SDXLTokenizer",
           "StableCascadeClipG", "StableCascadeClipGTokenizer", "StableCascadeClipModel", "StableCascadeTokenizer"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class SDXLClipG(SDClipModel):
    pass


class SDXLClipGTokenizer(SDTokenizer):
    pass


class SDXLTokenizer(ComfyOnly):
    pass


class SDXLClipModel(ComfyOnly):
    _SLOTS = frozenset({"l", "g"})


class SDXLRefinerClipModel(SD1ClipModel):
    _SLOTS = frozenset({"g"})


class StableCascadeClipGTokenizer(SDTokenizer):
    pass


class StableCascadeTokenizer(SD1Tokenizer):
    pass


class StableCascadeClipG(SDClipModel):
    pass


class StableCascadeClipModel(SD1ClipModel):
    pass
