"""Split-file models: a UNet alone (``diffusion_models/``), text encoders alone
(``text_encoders/``) and diffusers folders (``diffusers/``), read into the same networks a
single-file checkpoint gives (models/checkpoint.py), with the same detection functions.

A UNet file is in the LDM layout (keys bare or under ``model.diffusion_model.``) or in diffusers'
(``down_blocks.*``); its family comes from the record make-checkpoint writes, else from its context
width and label_emb, as ComfyUI tells a UNet-only file's model apart. A text-encoder file is in
transformers' layout (``text_model.*``) or OpenCLIP's (``transformer.resblocks.*``); which encoder it
is (CLIP-L, OpenCLIP-H, OpenCLIP-bigG) comes from its record, else its width.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from .cast import hold_in_file_dtype
from .checkpoint import (HELD_ROLES, _build, _describe, _hold, _materialise_buffers, _prediction, _unclip_family,
                         _unet_config, _vae_config, check_unet_widths, read_state_dict, strict_load)
from .diffusers_layout import diffusers_unet_to_ldm, diffusers_vae_to_ldm, folder_parts, is_diffusers_unet
from .errors import CheckpointError
from .families import FAMILIES, METADATA_KEY, UNET_PREFIX, VAE_PREFIX, Architecture, full_architecture
from .fp8 import manual_cast
from .text_encoders import ClipTextEncoder, TextEncoderConfig, config_from_keys, hf_clip_keys, openclip_keys
from .unet import UNetModel
from .variants import check_vae_layout, refusal, unet_variant
from .vae import AutoencoderKL, vae_keys

TEXT_RECORD = "latentgraph.text_encoder"  # {"name": "l"|"h"|"g", "config": TextEncoderConfig}
ENCODER_LABELS = {"l": "CLIP-L", "h": "OpenCLIP-H", "g": "OpenCLIP-bigG"}
ENCODER_WIDTHS = {768: "l", 1024: "h", 1280: "g"}
ENCODER_ACTS = {"l": "quick_gelu", "h": "gelu", "g": "gelu"}
# one encoder with CLIPLoader's stable_diffusion type -> the family it conditions (ComfyUI: a lone
# bigG is the SDXL refiner's)
SINGLE_FAMILIES = {"l": "sd15", "h": "sd2", "g": "sdxl_refiner"}
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")
CHECKPOINT_PREFIXES = ("cond_stage_model.", "conditioner.", "first_stage_model.")


# -- the UNet ------------------------------------------------------------------------------
def unet_tensors(sd: dict, source: str) -> tuple[dict, dict[str, str], str]:
    """(LDM-named UNet tensors, our key -> the file's key, layout name) of a UNet file."""
    if "input_blocks.0.0.weight" in sd:
        return sd, {k: k for k in sd}, "ldm"
    if UNET_PREFIX + "input_blocks.0.0.weight" in sd:
        # a whole checkpoint, or a UNet saved with its prefix: ComfyUI takes the UNet from either
        out = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
        return out, {k: UNET_PREFIX + k for k in out}, "ldm"
    if is_diffusers_unet(sd):
        ldm = diffusers_unet_to_ldm(sd, source)
        by_value = {id(v): k for k, v in sd.items()}
        return ldm, {k: by_value.get(id(v), k) for k, v in ldm.items()}, "diffusers"
    raise CheckpointError(f"{source}: not a UNet: no input_blocks.0.0.weight (LDM layout), "
                          f"model.diffusion_model.input_blocks.* or conv_in.weight with down_blocks.* (diffusers) "
                          f"({_describe(sd)})")


def unet_architecture(unet_sd: dict, metadata: dict, source: str) -> Architecture:
    """The architecture of a UNet alone: its record when the file has one, else read from the
    UNet's shapes (the checkpoint loader's detection), the family from its context width and
    label_emb (the only parts of a family a UNet shows)."""
    if metadata and METADATA_KEY in metadata:
        try:
            return Architecture.from_json(metadata[METADATA_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: its {METADATA_KEY} metadata is unreadable: {exc}") from None
    cfg = _unet_config(unet_sd, source)
    variant = unet_variant(cfg)
    if variant is not None:
        raise refusal(source, variant)
    family = {(768, None): "sd15", (1024, None): "sd2", (2048, 2816): "sdxl", (1280, 2560): "sdxl_refiner"}.get(
        (cfg.context_dim, cfg.adm_in_channels))
    if family is None and cfg.context_dim == 1024:
        family = _unclip_family({}, cfg)
    if family is None:
        raise CheckpointError(
            f"{source}: a UNet with context width {cfg.context_dim} and "
            f"{'no label_emb' if cfg.adm_in_channels is None else f'a label_emb {cfg.adm_in_channels} wide'} "
            f"is none of the families latentgraph knows (SD1.x: 768; SD2.x: 1024; SDXL: 2048 with label_emb 2816; "
            f"SDXL refiner: 1280 with label_emb 2560; SD2.1-unCLIP: 1024 with label_emb 1536 or 2048)")
    marked = {UNET_PREFIX + k: v for k, v in unet_sd.items() if k.endswith("norm1.bias")}
    prediction, zsnr = _prediction(FAMILIES[family], marked, cfg.in_channels)
    full = full_architecture(family)
    return Architecture(family, cfg, full.vae, full.text, prediction, zsnr)


def load_unet_file(path: str | Path, dtype: torch.dtype | None = None,
                   weight_dtype: torch.dtype | None = None) -> tuple[UNetModel, Architecture]:
    """A UNet file's network (on the CPU) and architecture. ``dtype``: the compute dtype (default:
    the file's); ``weight_dtype`` (fp8): weights kept in it and cast per layer (models/fp8.py)."""
    source = str(path)
    sd, metadata = read_state_dict(path)
    unet_sd, names, _ = unet_tensors(sd, source)
    del sd
    arch = unet_architecture(unet_sd, metadata, source)
    check_unet_widths(arch.unet, source)
    unet = _build("UNet", source, lambda: UNetModel(arch.unet))
    strict_load(unet, unet_sd, "UNet", source, weight_dtype or dtype, lambda k: names.get(k, k))
    _materialise_buffers(unet)
    if weight_dtype is not None:
        manual_cast(unet, weight_dtype, dtype or torch.float32)
    return unet.eval().requires_grad_(False), arch


# -- text encoders -------------------------------------------------------------------------
def _not_a_text_encoder(sd: dict, source: str) -> CheckpointError:
    """Say what a file given to a CLIP loader holds instead, and which loader takes it."""
    if any(k.startswith(UNET_PREFIX) for k in sd) and any(k.startswith(CHECKPOINT_PREFIXES) for k in sd):
        what = "a whole checkpoint (UNet, VAE and text encoders): load it with CheckpointLoaderSimple"
    elif "input_blocks.0.0.weight" in sd or any(k.startswith(UNET_PREFIX) for k in sd) or is_diffusers_unet(sd):
        what = "a UNet: load it with UNETLoader (Load Diffusion Model) from diffusion_models/"
    elif any(k.startswith(("encoder.", "decoder.")) for k in sd):
        what = "a VAE: load it with VAELoader from vae/"
    else:
        what = "no CLIP text encoder (text_model.* or transformer.resblocks.* with token_embedding.weight)"
    return CheckpointError(f"{source}: not a text encoder: the file holds {what} ({_describe(sd)})")


def _record(metadata: dict, source: str) -> tuple[str, TextEncoderConfig] | None:
    raw = (metadata or {}).get(TEXT_RECORD)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        if record["name"] not in ENCODER_LABELS:
            raise ValueError(f"unknown encoder {record['name']!r}")
        return record["name"], TextEncoderConfig.from_dict(record["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{source}: its {TEXT_RECORD} metadata is unreadable: {exc}") from None


def text_encoder_tensors(sd: dict, metadata: dict, source: str) -> tuple[str, TextEncoderConfig, dict]:
    """(encoder name l/h/g, its config, its tensors in our naming) of a text-encoder file."""
    if "text_model.embeddings.token_embedding.weight" in sd:
        keys = hf_clip_keys(sd, "")
    elif "token_embedding.weight" in sd and "transformer.resblocks.0.attn.in_proj_weight" in sd:
        keys = openclip_keys(sd, "")
    else:
        raise _not_a_text_encoder(sd, source)
    recorded = _record(metadata, source)
    if recorded is not None:
        return recorded[0], recorded[1], keys
    width = keys["transformer.embeddings.token_embedding.weight"].shape[1]
    name = ENCODER_WIDTHS.get(width)
    if name is None:
        raise CheckpointError(f"{source}: a text encoder {width} wide is none of CLIP-L (768), OpenCLIP-H (1024) "
                              f"or OpenCLIP-bigG (1280), the text encoders of Stable Diffusion 1.x/2.x/XL")
    try:
        config = config_from_keys(keys, ENCODER_ACTS[name])
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{source}: {ENCODER_LABELS[name]} text encoder with a layout latentgraph cannot "
                              f"read ({exc})") from None
    full = {"l": TextEncoderConfig.clip_l(), "h": TextEncoderConfig.vit_h(), "g": TextEncoderConfig.vit_bigg()}[name]
    if config.num_layers != full.num_layers:
        # diffusers' SD2 text_encoder drops the last of ViT-H's 24 layers: the clip-skip layer
        # index would then name another layer, so such a file is refused rather than misread
        raise CheckpointError(f"{source}: {ENCODER_LABELS[name]} text encoder with {config.num_layers} layers, "
                              f"expected {full.num_layers}; latentgraph reads only whole text encoders")
    if name != "l" and config.projection_dim is None:
        raise CheckpointError(f"{source}: {ENCODER_LABELS[name]} text encoder without text_projection: its pooled "
                              f"output cannot be made")
    return name, config, keys


def load_text_encoder_file(path: str | Path, dtype: torch.dtype | None = None
                           ) -> tuple[str, TextEncoderConfig, dict]:
    """Read and identify one text-encoder file: (name, config, tensors in our naming)."""
    sd, metadata = read_state_dict(path)
    return text_encoder_tensors(sd, metadata, str(path))


def build_clip(family: str, parts: dict[str, tuple[TextEncoderConfig, dict, str]],
               dtype: torch.dtype | None, hold: bool = False) -> tuple[Architecture, dict[str, ClipTextEncoder]]:
    """The text encoders of ``family`` from {name: (config, tensors, source)}, each in the role
    its family reads it with, loaded strictly. ``hold``: keep an fp16/bf16 file's weights and
    cast them per layer (checkpoint.HELD_ROLES)."""
    full = full_architecture(family)
    arch = replace(full, text={name: cfg for name, (cfg, _, _) in parts.items()})
    roles = {slot.name: slot.role for slot in arch.spec.text}
    encoders = {}
    for name, (cfg, tensors, source) in parts.items():
        enc = _build("text encoder", source, lambda cfg=cfg, name=name: ClipTextEncoder(cfg, roles[name]))
        held, layers = _hold(enc, "text", tensors, {"text": dtype}, HELD_ROLES if hold else ())
        strict_load(enc, tensors, f"text encoder '{name}'", source, dtype, held=held)
        hold_in_file_dtype(enc, layers, dtype)
        _materialise_buffers(enc)
        encoders[name] = enc.eval().requires_grad_(False)
    return arch, encoders


def clip_family(clip_type: str, names: list[tuple[str, str]]) -> str:
    """The family a CLIPLoader (one file) or DualCLIPLoader (two) makes of encoders
    [(name, source)], or an error naming the type, the files and what is supported."""
    found = ", ".join(f"{source} ({ENCODER_LABELS[n]})" for n, source in names)
    if len(names) == 1:
        if clip_type != "stable_diffusion":
            raise CheckpointError(f"CLIPLoader type '{clip_type}' is not supported: latentgraph loads the text "
                                  f"encoders of Stable Diffusion 1.x/2.x/XL only (type stable_diffusion: CLIP-L, "
                                  f"OpenCLIP-H or OpenCLIP-bigG)")
        return SINGLE_FAMILIES[names[0][0]]
    if clip_type != "sdxl":
        raise CheckpointError(f"DualCLIPLoader type '{clip_type}' is not supported: latentgraph loads type sdxl "
                              f"only (CLIP-L and OpenCLIP-bigG, in either order)")
    if sorted(n for n, _ in names) != ["g", "l"]:
        raise CheckpointError(f"DualCLIPLoader type sdxl needs one CLIP-L and one OpenCLIP-bigG text encoder; "
                              f"got {found}")
    return "sdxl"


def load_clip_files(paths: list[str | Path], clip_type: str, dtype: torch.dtype | None = None,
                    hold: bool = False) -> tuple[Architecture, dict[str, ClipTextEncoder]]:
    """CLIPLoader / DualCLIPLoader: the text encoders of the files, identified and placed."""
    read = [(load_text_encoder_file(p), str(p)) for p in paths]
    family = clip_family(clip_type, [(name, source) for (name, _, _), source in read])
    return build_clip(family, {name: (cfg, keys, source) for (name, cfg, keys), source in read}, dtype, hold)


# -- a diffusers folder --------------------------------------------------------------------
def load_vae_tensors(sd: dict, source: str, dtype: torch.dtype | None = None, hold: bool = False) -> AutoencoderKL:
    """A VAE from LDM-named or diffusers-named tensors (no prefix); ``hold`` as load_vae_file's."""
    from .diffusers_layout import is_diffusers_vae

    tensors = diffusers_vae_to_ldm(sd, source) if is_diffusers_vae(sd) else vae_keys(sd)
    if not tensors:
        tensors = vae_keys(sd, VAE_PREFIX)
    config = _vae_config(tensors, source, "")
    check_vae_layout(config, source)
    vae = _build("VAE", source, lambda: AutoencoderKL(config))
    held, layers = _hold(vae, "vae", tensors, {"vae": dtype}, HELD_ROLES if hold else ())
    strict_load(vae, tensors, "VAE", source, dtype, linear_as_conv=True, held=held)
    hold_in_file_dtype(vae, layers, dtype)
    _materialise_buffers(vae)
    return vae.eval().requires_grad_(False)


def load_vae_any(path: str | Path, dtype: torch.dtype | None = None, hold: bool = False) -> AutoencoderKL:
    """VAELoader's file: a diffusers-layout VAE (``encoder.down_blocks.*``, as sdxl-vae-fp16-fix's
    diffusion_pytorch_model.safetensors) read here, any other through the checkpoint loader's
    load_vae_file."""
    from .checkpoint import load_vae_file
    from .diffusers_layout import is_diffusers_vae

    sd, _ = read_state_dict(path)
    if is_diffusers_vae(sd):
        return load_vae_tensors(sd, str(path), dtype, hold)
    del sd
    return load_vae_file(path, dtype, hold)


def load_diffusers_folder(folder: str | Path, dtypes: dict[str, torch.dtype] | None = None
                          ) -> tuple[UNetModel, Architecture, dict[str, ClipTextEncoder], AutoencoderKL]:
    """DiffusersLoader: (UNet, architecture, text encoders, VAE) of a diffusers folder, each
    file read as its own loader reads it (text_encoder_2 present: SDXL's two encoders)."""
    dtypes = dtypes or {}
    folder = Path(folder)
    parts = folder_parts(folder)
    absent = [f"{name}/" for name in ("unet", "vae", "text_encoder") if parts[name] is None]
    if absent:
        raise CheckpointError(f"{folder}: not a diffusers folder latentgraph can load: no model file in "
                              f"{', '.join(absent)} (looked for diffusion_pytorch_model[.fp16].safetensors/.bin "
                              f"and model[.fp16].safetensors / pytorch_model[.fp16].bin)")
    unet, arch = load_unet_file(parts["unet"], dtypes.get("unet"))
    texts = [p for p in (parts["text_encoder"], parts["text_encoder_2"]) if p is not None]
    clip_arch, encoders = load_clip_files(texts, "sdxl" if len(texts) == 2 else "stable_diffusion",
                                          dtypes.get("text"))
    if clip_arch.family != arch.family:
        raise CheckpointError(f"{folder}: its UNet is {arch.spec.label} but its text encoders are "
                              f"{clip_arch.spec.label}'s")
    vae_sd, _ = read_state_dict(parts["vae"])
    vae = load_vae_tensors(vae_sd, str(parts["vae"]), dtypes.get("vae"))
    return unet, replace(arch, text=clip_arch.text, vae=vae.config), encoders, vae
