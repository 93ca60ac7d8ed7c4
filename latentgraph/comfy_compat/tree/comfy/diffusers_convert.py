"""ComfyUI's ``comfy.diffusers_convert``: a diffusers VAE's tensors under the LDM names that
``comfy.sd.VAE(sd=...)`` and checkpoints use, over latentgraph's diffusers layout table. The
text-encoder converters are not provided (latentgraph's text encoders keep transformers'
names). ``load_diffusers`` lives in ComfyUI's ``comfy.diffusers_load``, not here."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime
from latentgraph.models.diffusers_layout import diffusers_vae_to_ldm

__all__ = ["convert_vae_state_dict"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def convert_vae_state_dict(vae_state_dict: dict) -> dict:
    """LDM-named tensors of a diffusers VAE (attention projections as 1x1 convs); a tensor with
    no place in an SD VAE is an error naming it, where ComfyUI would pass it through."""
    return diffusers_vae_to_ldm(vae_state_dict, "convert_vae_state_dict")
