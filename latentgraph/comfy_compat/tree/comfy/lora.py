"""ComfyUI's ``comfy.lora``: the maps from a LoRA file's module names to the weight keys that
``add_patches`` takes, and ``load_lora``, which turns a LoRA state dict into those patches.

Packs use them to apply a LoRA their own way (Inspire's block weights: the patches sorted by
UNet block, each added with its own strength). The names come from latentgraph's LoRA tables
(models/lora.py: kohya, diffusers, PEFT and ComfyUI's own spellings), the patches are
latentgraph's LoRA patch objects, which our MODEL and CLIP values' ``add_patches`` apply as
LoraLoader does. ``model_lora_keys_clip`` takes a CLIP value (ComfyUI passes
``clip.cond_stage_model``, which latentgraph's CLIP values do not have)."""

from __future__ import annotations

import logging

from latentgraph.comfy_compat import runtime
from latentgraph.models.comfy_faces import TextEncoderFace
from latentgraph.models.families import FAMILIES
from latentgraph.models.lora import module_patches, text_lora_names, unet_lora_names

from comfy.model_patcher import calculate_weight  # the tree's own module

__all__ = ["calculate_weight", "load_lora", "model_lora_keys_clip", "model_lora_keys_unet"]

log = logging.getLogger("latentgraph.comfy_compat")
UNET_KEY = "diffusion_model."


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def model_lora_keys_unet(model, key_map: dict | None = None) -> dict:
    """``key_map`` (a new dict when None) with every LoRA module name that addresses a weight of
    the UNet of ``model`` (``model.model``, or a MODEL) -> that weight's ComfyUI key
    (``diffusion_model.input_blocks.1.0.in_layers.2.weight``)."""
    key_map = {} if key_map is None else key_map
    inner = getattr(model, "model", model) if not hasattr(model, "diffusion_model") else model
    unet = getattr(inner, "diffusion_model", None)
    if unet is None:
        raise TypeError(f"model_lora_keys_unet: expected model.model of a MODEL, got {type(model).__name__}")
    for alias, path in unet_lora_names(unet).items():
        key_map[alias] = f"{UNET_KEY}{path}.weight"
    return key_map


def model_lora_keys_clip(model, key_map: dict | None = None) -> dict:
    """``key_map`` (a new dict when None) with every LoRA module name that addresses a weight of
    the CLIP value's text encoders -> its ComfyUI key (``clip_l.transformer.text_model...``)."""
    key_map = {} if key_map is None else key_map
    if isinstance(model, TextEncoderFace):  # ComfyUI's callers pass clip.cond_stage_model
        model = model._clip
    encoders, arch = getattr(model, "encoders", None), getattr(model, "arch", None)
    if encoders is None or arch is None:
        raise TypeError(f"model_lora_keys_clip: expected a CLIP value or its cond_stage_model, got "
                        f"{type(model).__name__}")
    comfy_key = {found: key for key, found in model._comfy_names().items()}  # (slot, parameter) -> key
    for position, slot in enumerate(FAMILIES[arch.family].text):
        if slot.name not in encoders:
            continue
        for alias, path in text_lora_names(encoders[slot.name], slot, position).items():
            key = comfy_key.get((slot.name, f"{path}.weight"))
            if key is not None:
                key_map[alias] = key
    return key_map


def load_lora(lora: dict, to_load: dict, log_missing: bool = True) -> dict:
    """{weight key: patch} for each module name of ``to_load`` (a key map) that ``lora`` holds;
    a module's bias delta goes to its ``.bias`` key. Keys used by no patch are logged, as
    ComfyUI logs them. The patches go to ``add_patches`` of a MODEL or CLIP."""
    found, used = module_patches(lora, to_load)
    patch_dict = {}
    for name, patches in found.items():
        target = to_load[name]
        if "weight" in patches:
            patch_dict[target] = patches["weight"]
        if "bias" in patches:
            patch_dict[target[:-len(".weight")] + ".bias" if target.endswith(".weight") else target] = patches["bias"]
    if log_missing:
        for key in lora:
            if key not in used:
                log.warning("lora key not loaded: %s", key)
    return patch_dict
