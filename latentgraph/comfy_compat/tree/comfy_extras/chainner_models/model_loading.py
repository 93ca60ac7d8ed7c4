"""ComfyUI's ``comfy_extras.chainner_models.model_loading``: an upscale model from a state dict,
the UPSCALE_MODEL value UpscaleModelLoader gives (a spandrel descriptor in eval mode)."""

from __future__ import annotations

import logging

from latentgraph.comfy_compat import runtime
from latentgraph.models.upscale import load_upscale_state_dict

log = logging.getLogger("latentgraph.comfy_compat")


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def load_state_dict(state_dict: dict):
    """The upscale model of ``state_dict``; a model spandrel knows but that is not a
    single-image upscaler (an inpainting one) is an error here, where ComfyUI returns it."""
    log.warning("comfy_extras.chainner_models is deprecated in ComfyUI; packs should use spandrel")
    return load_upscale_state_dict(state_dict, "model_loading.load_state_dict").eval()
