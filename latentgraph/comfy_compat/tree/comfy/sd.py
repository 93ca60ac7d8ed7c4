"""ComfyUI's ``comfy.sd``: loading a checkpoint into (MODEL, CLIP, VAE), a LoRA state dict onto
them, a VAE from a state dict, and the ``CLIP``/``VAE`` classes that latentgraph's CLIP and VAE
values are instances of. Loading goes through the running node's model cache and placement,
as latentgraph's own loader nodes do."""

from __future__ import annotations

import enum
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


class CLIPType(enum.Enum):
    """ComfyUI's text-encoder types, with its numbers (latentgraph loads STABLE_DIFFUSION's:
    SD1.x, SD2.x, the SDXL refiner, and SDXL's pair)."""

    STABLE_DIFFUSION = 1
    STABLE_CASCADE = 2
    SD3 = 3
    STABLE_AUDIO = 4
    HUNYUAN_DIT = 5
    FLUX = 6
    MOCHI = 7
    LTXV = 8
    HUNYUAN_VIDEO = 9
    PIXART = 10
    COSMOS = 11
    LUMINA2 = 12
    WAN = 13
    HIDREAM = 14
    CHROMA = 15
    ACE = 16
    OMNIGEN2 = 17
    QWEN_IMAGE = 18
    HUNYUAN_IMAGE = 19


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


def load_diffusion_model(unet_path: str, model_options: dict | None = None):
    """A MODEL from a UNet file alone (LDM or diffusers keys), as the UNETLoader node loads it;
    ``model_options={"dtype": torch.float8_e4m3fn}`` keeps the weights in fp8."""
    from latentgraph.models.checkpoint import file_key
    from latentgraph.models.fp8 import WEIGHT_DTYPES
    from latentgraph.models.split_files import load_unet_file

    options = dict(model_options or {})
    store = options.pop("dtype", None)
    if options:
        raise ValueError(f"load_diffusion_model(model_options={model_options!r}): only 'dtype' is applied")
    if store is not None and store not in WEIGHT_DTYPES.values():
        raise ValueError(f"load_diffusion_model: weight dtype {store} is not one latentgraph keeps weights in "
                         f"(the model's dtype, or {', '.join(str(d) for d in WEIGHT_DTYPES.values() if d)})")
    placement, cache = _services()

    def load():
        unet, arch = load_unet_file(unet_path, placement.dtypes["unet"], store)
        return unet.to(placement.home), arch

    key = ("unet", *file_key(unet_path), str(store), placement.key())
    unet, arch = cache.get_or_load(key, load) if cache is not None else load()
    return SDModel(unet, arch, schedule_for(arch), placement)


def load_unet(unet_path: str, dtype: torch.dtype | None = None):
    """ComfyUI's older name: ``dtype`` is the weights' storage dtype."""
    return load_diffusion_model(unet_path, {"dtype": dtype} if dtype is not None else {})


def load_clip(ckpt_paths: list, embedding_directory=None, clip_type: CLIPType = CLIPType.STABLE_DIFFUSION,
              model_options: dict | None = None) -> TextModel:
    """A CLIP from text-encoder files, as the CLIPLoader/DualCLIPLoader nodes load them (two
    files of STABLE_DIFFUSION: SDXL's CLIP-L and bigG, in either order)."""
    from latentgraph.models.checkpoint import file_key
    from latentgraph.models.split_files import load_clip_files

    if model_options:
        raise ValueError(f"load_clip(model_options={model_options!r}): loading options are not applied")
    if not isinstance(clip_type, CLIPType):
        raise TypeError(f"load_clip: clip_type must be a comfy.sd.CLIPType, got {clip_type!r}")
    paths = [Path(p) for p in ckpt_paths]
    name = "sdxl" if clip_type is CLIPType.STABLE_DIFFUSION and len(paths) == 2 else clip_type.name.lower()
    placement, cache = _services()

    def load():
        arch, encoders = load_clip_files(paths, name, placement.dtypes["text"], hold=placement.device.type == "cpu")
        return arch, {n: enc.to(placement.home) for n, enc in encoders.items()}

    key = ("clip", tuple(file_key(p) for p in paths), name, placement.key())
    arch, encoders = cache.get_or_load(key, load) if cache is not None else load()
    dirs = [embedding_directory] if isinstance(embedding_directory, (str, Path)) else (embedding_directory or [])
    return TextModel(arch, encoders, placement, embedding_dirs=tuple(Path(d) for d in dirs))
