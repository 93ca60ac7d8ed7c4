"""ComfyUI's ``comfy.latent_formats`` for the families latentgraph loads. The classes are also
latentgraph's LatentFormat (models/comfy_latent.py), so ``model.model.latent_format`` is one of
them and a pack's own subclass works wherever latentgraph takes a latent format."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime
from latentgraph.models.comfy_latent import SD15, SDXL, LatentFormat, SDXL_Playground_2_5

__all__ = ["SD15", "SDXL", "LatentFormat", "SDXL_Playground_2_5"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
