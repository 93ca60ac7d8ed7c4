"""Random-weight split files in the published layouts (``latentgraph make-checkpoint --kind
unet|clip|diffusers``): a UNet alone (LDM or diffusers keys), one text encoder alone
(transformers or OpenCLIP keys), a diffusers folder. The weights are those make_checkpoint draws
for the same family, size and seed, so a split set gives what the checkpoint gives."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import build_text_encoders
from .diffusers_layout import ldm_unet_to_diffusers, ldm_vae_to_diffusers
from .families import METADATA_KEY, Architecture, full_architecture, tiny_architecture
from .make import _check_size_and_dtype, _save
from .split_files import TEXT_RECORD
from .text_encoders import to_hf_clip_keys, to_openclip_keys
from .unet import UNetModel
from .vae import AutoencoderKL

UNET_LAYOUTS = ("ldm", "diffusers")
TEXT_LAYOUTS = ("hf", "openclip")
# diffusers' pipeline class per family, for model_index.json
PIPELINES = {"sd15": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline"}


def _arch(family: str, size: str, dtype: str) -> Architecture:
    _check_size_and_dtype(size, dtype)
    return tiny_architecture(family) if size == "tiny" else full_architecture(family)


def _unet(arch: Architecture, seed: int) -> UNetModel:
    torch.manual_seed(seed)  # make_checkpoint's order: UNet at seed, VAE at seed + 1, text at seed + 2
    return UNetModel(arch.unet)


def unet_file_tensors(arch: Architecture, seed: int, layout: str) -> dict[str, torch.Tensor]:
    if layout not in UNET_LAYOUTS:
        raise ValueError(f"a UNet file's layout is ldm or diffusers, not {layout!r}")
    with torch.no_grad():
        unet = _unet(arch, seed)
        return ldm_unet_to_diffusers(unet) if layout == "diffusers" else dict(unet.state_dict())


def make_unet(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
              layout: str = "ldm", prediction: str | None = None, write_metadata: bool = True) -> Architecture:
    """Write ``family``'s UNet alone (bare LDM keys, as diffusion_models/ files, or diffusers keys)."""
    arch = _arch(family, size, dtype)
    if prediction is not None:
        arch.prediction = prediction
    _save(unet_file_tensors(arch, seed, layout), out, dtype, {METADATA_KEY: arch.to_json()} if write_metadata else {})
    return arch


def default_encoder(family: str) -> str:
    return {"sd15": "l", "sd2": "h", "sdxl": "l", "sdxl_refiner": "g"}.get(family) or "l"


def text_file_tensors(arch: Architecture, encoder: str, seed: int, layout: str) -> dict[str, torch.Tensor]:
    if layout not in TEXT_LAYOUTS:
        raise ValueError(f"a text encoder's layout is hf or openclip, not {layout!r}")
    if encoder not in arch.text:
        raise ValueError(f"{arch.spec.label} has no text encoder {encoder!r}; it has {', '.join(sorted(arch.text))}")
    with torch.no_grad():
        torch.manual_seed(seed + 2)
        state = build_text_encoders(arch)[encoder].state_dict()
    if layout == "openclip":
        return to_openclip_keys(state, "")
    out = to_hf_clip_keys(state, "text_model.")
    if "text_projection.weight" in state:  # CLIPTextModelWithProjection's name for it
        out["text_projection.weight"] = state["text_projection.weight"]
    return out


def make_text_encoder(out: str | Path, family: str, encoder: str | None = None, size: str = "tiny", seed: int = 0,
                      dtype: str = "fp32", layout: str = "hf", write_metadata: bool = True) -> str:
    """Write one of ``family``'s text encoders alone (CLIP-L ``l``, OpenCLIP-H ``h``, bigG ``g``);
    returns the encoder written."""
    arch = _arch(family, size, dtype)
    encoder = encoder or default_encoder(family)
    tensors = text_file_tensors(arch, encoder, seed, layout)
    record = json.dumps({"name": encoder, "config": arch.text[encoder].to_dict()}, sort_keys=True)
    _save(tensors, out, dtype, {TEXT_RECORD: record} if write_metadata else {})
    return encoder


def make_diffusers(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                   prediction: str | None = None, write_metadata: bool = True) -> Architecture:
    """Write a diffusers folder (model_index.json, unet/, vae/, text_encoder/, text_encoder_2/ for
    SDXL) with make_checkpoint's weights, the file names ComfyUI's DiffusersLoader reads."""
    if family not in PIPELINES:
        raise ValueError(f"diffusers folders are made for {', '.join(PIPELINES)}, not {family!r}")
    arch = _arch(family, size, dtype)
    if prediction is not None:
        arch.prediction = prediction
    out = Path(out)
    meta = {METADATA_KEY: arch.to_json()} if write_metadata else {}
    _save(unet_file_tensors(arch, seed, "diffusers"), out / "unet" / "diffusion_pytorch_model.safetensors", dtype, meta)
    with torch.no_grad():
        torch.manual_seed(seed + 1)
        vae = ldm_vae_to_diffusers(AutoencoderKL(arch.vae).state_dict())
    _save(vae, out / "vae" / "diffusion_pytorch_model.safetensors", dtype, {})
    for folder, encoder in zip(("text_encoder", "text_encoder_2"), [slot.name for slot in arch.spec.text]):
        make_text_encoder(out / folder / "model.safetensors", family, encoder, size, seed, dtype, "hf", write_metadata)
    index = {"_class_name": PIPELINES[family], "_diffusers_version": "0.30.0",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
    (out / "model_index.json").write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return arch


ENCODER_VARIANTS = {"clip-l": "l", "clip-h": "h", "clip-g": "g"}


def write_for_cli(kind: str, args, dtype: str) -> str:
    """``make-checkpoint --kind unet|clip|diffusers``: write what the arguments ask for and say
    what was written (--layout: ldm|diffusers for a UNet, hf|openclip for a text encoder;
    --variant clip-l|clip-h|clip-g picks a family's text encoder)."""
    from .families import FAMILIES
    from .split_files import ENCODER_LABELS

    label = FAMILIES[args.family].label if args.family in FAMILIES else args.family
    meta = not args.no_metadata
    if kind != "clip" and args.variant is not None:
        raise ValueError(f"--variant {args.variant} is not for --kind {kind}")
    if kind == "unet":
        layout = args.layout or "ldm"
        if layout not in UNET_LAYOUTS:
            raise ValueError(f"--layout for --kind unet is ldm or diffusers, not {layout}")
        arch = make_unet(args.out, args.family, args.size, args.seed, dtype, layout, args.prediction, meta)
        return f"{label} UNet ({layout} keys, {args.size}, {arch.prediction}-prediction, {dtype})"
    if args.layout is not None and kind == "diffusers":
        raise ValueError("--layout is not for --kind diffusers (a diffusers folder has one layout)")
    if kind == "diffusers":
        arch = make_diffusers(args.out, args.family, args.size, args.seed, dtype, args.prediction, meta)
        return f"{label} diffusers folder ({args.size}, {arch.prediction}-prediction, {dtype})"
    if args.prediction is not None:
        raise ValueError("--prediction is not for a text encoder")
    layout = args.layout or "hf"
    if layout not in TEXT_LAYOUTS:
        raise ValueError(f"--layout for --kind clip is hf or openclip, not {layout}")
    if args.variant is not None and args.variant not in ENCODER_VARIANTS:
        raise ValueError(f"--variant for --kind clip is {', '.join(ENCODER_VARIANTS)}, not {args.variant}")
    encoder = make_text_encoder(args.out, args.family, ENCODER_VARIANTS.get(args.variant), args.size, args.seed,
                                dtype, layout, meta)
    return f"{ENCODER_LABELS[encoder]} text encoder of {label} ({layout} keys, {args.size}, {dtype})"
