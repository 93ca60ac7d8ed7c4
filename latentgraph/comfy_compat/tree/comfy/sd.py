"""ComfyUI's ``comfy.sd``: loading a checkpoint into (MODEL, CLIP, VAE), a LoRA state dict onto
them, a VAE from a state dict, and the ``CLIP``/``VAE`` classes that latentgraph's CLIP and VAE
values are instances of. Loading goes through the running node's model cache and placement,
as latentgraph's own loader nodes do."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.models.clip import TextModel
from latentgraph.nodes.sd import SDModel, VAEModel, schedule_for

from comfy.model_patcher import Alias  # the tree's own module

log = logging.getLogger("latentgraph.comfy_compat")


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def _services():
    """(placement, model cache or None) of the running node, else from the bound Environment."""
    ctx = runtime.current_node()
    if ctx is not None and getattr(ctx, "services", None) is not None:
        from latentgraph.nodes.loaders import services

        return services(ctx)
    from latentgraph.models.management import Placement

    return Placement.from_env(runtime.current_env()), None


class CLIP(metaclass=Alias):
    """What latentgraph's CLIP values are (models/clip.py's TextModel, with ComfyUI's methods:
    tokenize, encode_from_tokens, clone, add_patches, clip_layer)."""

    _ours = TextModel

    def __init__(self, target=None, embedding_directory=None, no_init=False, **_):
        raise TypeError("comfy.sd.CLIP(...): latentgraph makes CLIP values from checkpoint files "
                        "(comfy.sd.load_checkpoint_guess_config, or the loader nodes), not from a CLIP target")


class VAE(VAEModel, metaclass=Alias):
    """latentgraph's VAE value; ``VAE(sd=state_dict)`` builds one from a VAE's tensors (LDM or
    diffusers names, with or without ``first_stage_model.``), as packs do."""

    _ours = VAEModel

    def __init__(self, sd: dict | None = None, device=None, config=None, dtype: torch.dtype | None = None,
                 metadata=None):
        from latentgraph.models.split_files import load_vae_tensors

        if sd is None or config is not None:
            raise TypeError("comfy.sd.VAE(...): latentgraph builds a VAE from its tensors only: VAE(sd=state_dict)")
        if not isinstance(sd, dict) or not sd:
            raise ValueError(f"comfy.sd.VAE(sd=...): expected a non-empty dict of tensors, got {type(sd).__name__}")
        placement, _ = _services()
        vae = load_vae_tensors(sd, "comfy.sd.VAE(sd=...)", dtype or placement.dtypes["vae"])
        super().__init__(vae.to(placement.home), placement)


def load_checkpoint_guess_config(ckpt_path: str, output_vae: bool = True, output_clip: bool = True,
                                 output_clipvision: bool = False, embedding_directory=None, output_model: bool = True,
                                 model_options: dict | None = None, te_model_options: dict | None = None) -> tuple:
    """(MODEL, CLIP, VAE, CLIP vision) of a single-file checkpoint, each None when not asked
    for; the family is detected from the keys (SD1.x, SD2.x, SDXL, ...)."""
    from latentgraph.models.checkpoint import load_placed

    for name, options in (("model_options", model_options), ("te_model_options", te_model_options)):
        if options:
            raise ValueError(f"load_checkpoint_guess_config({name}={options!r}): latentgraph chooses dtypes from "
                             f"its --dtype setting; loading options are not applied")
    placement, cache = _services()
    ck = load_placed(ckpt_path, placement, cache)
    if output_clipvision and ck.arch.spec.unclip_dim is not None:
        raise ValueError(f"{ckpt_path}: loading an unCLIP checkpoint's image encoder through "
                         f"load_checkpoint_guess_config is not provided; use the unCLIPCheckpointLoader node")
    dirs = [embedding_directory] if isinstance(embedding_directory, (str, Path)) else (embedding_directory or [])
    model = SDModel(ck.unet, ck.arch, schedule_for(ck.arch), placement) if output_model else None
    clip = TextModel(ck.arch, ck.text, placement, embedding_dirs=tuple(Path(d) for d in dirs)) if output_clip else None
    vae = VAEModel(ck.vae, placement) if output_vae else None
    return model, clip, vae, None


def load_lora_for_models(model, clip, lora: dict, strength_model: float, strength_clip: float) -> tuple:
    """(MODEL, CLIP) with a LoRA's tensors (a state dict, as comfy.utils.load_torch_file gives)
    applied; either may be None. Keys that fit nothing here are logged, as ComfyUI logs them."""
    from dataclasses import replace

    from latentgraph.models.families import FAMILIES
    from latentgraph.models.lora import apply_lora, match_lora, unapplied_report

    if model is None and clip is None:
        return None, None
    if not isinstance(lora, dict):
        raise TypeError(f"load_lora_for_models: lora must be a dict of tensors, got {type(lora).__name__}")
    family = (model if model is not None else clip).arch.family
    unet = model.unet if model is not None else None
    text = clip.encoders if clip is not None else {}
    m = match_lora(lora, family, unet, text, "LoRA")
    warning = unapplied_report(m, "LoRA", len(lora), FAMILIES[family].label)
    if warning:
        log.warning("%s", warning)
    new_model = None
    if model is not None:
        new_model = model.clone(unet=apply_lora(model.unet, m.unet, strength_model),
                                patches=model.patches + (("LoRA", strength_model),))
    new_clip = None
    if clip is not None:
        new_clip = replace(clip, encoders={n: apply_lora(enc, m.text[n], strength_clip) for n, enc in text.items()})
    return new_model, new_clip
