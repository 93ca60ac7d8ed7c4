"""Loader nodes: checkpoints, VAEs and LoRAs from the model folders, with ComfyUI's names.

Models come from the process's model cache (``ctx.services["models"]``), keyed by the file's
identity and the placement, so a checkpoint is read once however many nodes and runs use it;
a LoRA makes new modules that share every unpatched tensor with the cached base.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Annotated

from ..graph import CLIP, MODEL, VAE, Combo, Float, NodeContext, Result, file_identity, node
from ..graph.lazy import lazy
file_key = lazy("..models.checkpoint", "file_key")
load_placed = lazy("..models.checkpoint", "load_placed")
TextModel = lazy("..models.clip", "TextModel")
load_lora = lazy("..models.lora", "load_lora")
ModelCache = lazy("..models.management", "ModelCache")
Placement = lazy("..models.management", "Placement")
load_vae_any = lazy("..models.split_files", "load_vae_any")
from .sd import SDModel, VAEModel, schedule_for

log = logging.getLogger("latentgraph.nodes")


def services(ctx: NodeContext) -> tuple[Placement, ModelCache]:
    """The placement and model cache of this executor (made on first use if the front door
    gave none)."""
    env = ctx.env
    placement = ctx.services.get("placement")
    if placement is None:
        placement = ctx.services.setdefault("placement", Placement.from_options(env.device, env.dtype, env.lowvram))
    cache = ctx.services.setdefault("models", ModelCache())
    return placement, cache


def model_files(kind: str):
    return lambda env: env.list_models(kind) if env is not None else []


def missing_model(env, kind: str, label: str, name: str) -> str | None:
    """The validation message for a model file that is not in any folder of its kind."""
    if env.find_model(kind, name) is None:
        folders = ", ".join(str(f) for f in env.folders(kind))
        return f"{label} '{name}' not found (searched: {folders})"
    return None


def model_identity(env, kind: str, name: str):
    path = env.find_model(kind, name)
    return file_identity(path) if path is not None else ("missing", name)


# Hooks name the input they read (that is how the engine hands it over).
def _ckpt_check(ckpt_name, env):
    return missing_model(env, "checkpoints", "checkpoint", ckpt_name)


def _ckpt_key(ckpt_name, env):
    return model_identity(env, "checkpoints", ckpt_name)


def _vae_check(vae_name, env):
    return missing_model(env, "vae", "VAE", vae_name)


def _vae_key(vae_name, env):
    return model_identity(env, "vae", vae_name)


def _lora_check(lora_name, env):
    return missing_model(env, "loras", "LoRA", lora_name)


def _lora_key(lora_name, env):
    return model_identity(env, "loras", lora_name)


@node(category="loaders", display_name="Load Checkpoint", outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
      fingerprint=_ckpt_key, validate=_ckpt_check)
def CheckpointLoaderSimple(
    ckpt_name: Annotated[str, Combo(model_files("checkpoints"), tooltip="The name of the checkpoint (model) to load.")],
    ctx: NodeContext,
) -> tuple:
    """Loads a diffusion model checkpoint; its UNet, text encoders and VAE."""
    placement, cache = services(ctx)
    ck = load_placed(ctx.env.find_model("checkpoints", ckpt_name), placement, cache)
    model = SDModel(ck.unet, ck.arch, schedule_for(ck.arch), placement)
    clip = TextModel(ck.arch, ck.text, placement, embedding_dirs=tuple(ctx.env.folders("embeddings")))
    return model, clip, VAEModel(ck.vae, placement)


@node(category="loaders", display_name="Load VAE", outputs=[VAE],
      fingerprint=_vae_key, validate=_vae_check)
def VAELoader(vae_name: Annotated[str, Combo(model_files("vae"))], ctx: NodeContext) -> VAEModel:
    """Loads a standalone VAE file (vae-ft-mse-840000-ema-pruned, sdxl_vae, ...)."""
    placement, cache = services(ctx)
    path = ctx.env.find_model("vae", vae_name)

    def load():
        # on the CPU an fp16/bf16 file stays in its dtype, cast per layer as it runs (bit-identical)
        return load_vae_any(path, placement.dtypes["vae"], hold=placement.device.type == "cpu").to(placement.home)

    vae = cache.get_or_load(("vae", *file_key(path), placement.key()), load)
    return VAEModel(vae, placement)


def _apply_lora(ctx: NodeContext, model: SDModel, clip: TextModel | None, lora_name: str,
                strength_model: float, strength_clip: float) -> Result:
    if strength_model == 0 and strength_clip == 0:  # as ComfyUI: switched off, the file is not even read
        return Result(model, clip) if clip is not None else Result(model)
    path = ctx.env.find_model("loras", lora_name)
    text = clip.encoders if clip is not None else {}
    # a tensor that does not fit, or a file of which nothing applies, raises here (LoraError)
    loaded = load_lora(path, model.arch.family, model.unet, text, strength_model, strength_clip, source=lora_name)
    if loaded.harmless:
        log.debug("%s: %d LoRA keys change nothing here and were skipped (first: %s)", lora_name,
                  len(loaded.harmless), ", ".join(loaded.harmless[:3]))
    new_model = model.clone(unet=loaded.unet, patches=model.patches + ((lora_name, strength_model),))
    new_clip = replace(clip, encoders=loaded.text) if clip is not None else None
    values = (new_model, new_clip) if clip is not None else (new_model,)
    if loaded.warning is None:
        return Result(*values)
    # keys applied in part: shown on the node (its UI output) and by the CLI, and logged
    log.warning("%s (node %s): %s", ctx.class_type, ctx.node_id, loaded.warning)
    return Result(*values, ui={"warnings": [loaded.warning]})


_STRENGTH = Float(1.0, min=-100.0, max=100.0, step=0.01)


@node(category="loaders", display_name="Load LoRA", outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP")],
      fingerprint=_lora_key, validate=_lora_check)
def LoraLoader(
    model: Annotated[SDModel, MODEL(tooltip="The diffusion model the LoRA will be applied to.")],
    clip: Annotated[TextModel, CLIP(tooltip="The CLIP model the LoRA will be applied to.")],
    lora_name: Annotated[str, Combo(model_files("loras"), tooltip="The name of the LoRA.")],
    strength_model: Annotated[float, _STRENGTH(
        tooltip="How strongly to modify the diffusion model. This value can be negative.")],
    strength_clip: Annotated[float, _STRENGTH(
        tooltip="How strongly to modify the CLIP model. This value can be negative.")],
    ctx: NodeContext,
) -> tuple:
    """Applies a LoRA to the model and CLIP as weight patches; the loaded base stays as it is.
    Keys that match nothing here come back as a warning on the node."""
    return _apply_lora(ctx, model, clip, lora_name, strength_model, strength_clip)


@node(category="loaders", display_name="LoraLoaderModelOnly", outputs=[MODEL],
      fingerprint=_lora_key, validate=_lora_check)
def LoraLoaderModelOnly(
    model: Annotated[SDModel, MODEL],
    lora_name: Annotated[str, Combo(model_files("loras"))],
    strength_model: Annotated[float, Float(1.0, min=-100.0, max=100.0, step=0.01)],
    ctx: NodeContext,
) -> SDModel:
    """Applies a LoRA to the diffusion model only."""
    return _apply_lora(ctx, model, None, lora_name, strength_model, 0.0)
