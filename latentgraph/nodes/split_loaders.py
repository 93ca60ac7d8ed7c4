"""Split-file loaders, with ComfyUI's names and inputs: UNETLoader (a UNet alone, optionally
kept in fp8), CLIPLoader and DualCLIPLoader (text encoders alone), DiffusersLoader (a diffusers
folder). What they build is what CheckpointLoaderSimple builds from the same weights
(models/split_files.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")

from ..graph import CLIP, MODEL, Combo, NodeContext, file_identity, node
file_key = lazy("..models.checkpoint", "file_key")
TextModel = lazy("..models.clip", "TextModel")
folder_parts = lazy("..models.diffusers_layout", "folder_parts")
WEIGHT_DTYPES = lazy("..models.fp8", "WEIGHT_DTYPES")
Placement = lazy("..models.management", "Placement")
load_clip_files = lazy("..models.split_files", "load_clip_files")
load_diffusers_folder = lazy("..models.split_files", "load_diffusers_folder")
load_unet_file = lazy("..models.split_files", "load_unet_file")
from .loaders import missing_model, model_files, model_identity, services
from .choices import CLIP_TYPES, DUAL_CLIP_TYPES, WEIGHT_DTYPE_NAMES
from .sd import SDModel, VAEModel, schedule_for

DEVICES = Combo(["default", "cpu"], optional=True, extra={"advanced": True})


def _unet_check(unet_name, env):
    return missing_model(env, "diffusion_models", "diffusion model", unet_name)


def _unet_key(unet_name, env):
    return model_identity(env, "diffusion_models", unet_name)


@node(category="advanced/loaders", display_name="Load Diffusion Model", outputs=[MODEL],
      fingerprint=_unet_key, validate=_unet_check)
def UNETLoader(
    unet_name: Annotated[str, Combo(model_files("diffusion_models"))],
    weight_dtype: Annotated[str, Combo(WEIGHT_DTYPE_NAMES)],
    ctx: NodeContext,
) -> SDModel:
    """Loads a UNet alone (LDM or diffusers keys) from diffusion_models/; fp8 weight dtypes keep
    its weights in fp8 and compute each layer in the model's dtype."""
    placement, cache = services(ctx)
    path = ctx.env.find_model("diffusion_models", unet_name)
    store = WEIGHT_DTYPES[weight_dtype]

    def load():
        unet, arch = load_unet_file(path, placement.dtypes["unet"], store)
        return unet.to(placement.home), arch

    unet, arch = cache.get_or_load(("unet", *file_key(path), str(store), placement.key()), load)
    return SDModel(unet, arch, schedule_for(arch), placement)


def _clip_check(clip_name, env):
    return missing_model(env, "text_encoders", "text encoder", clip_name)


def _clip_key(clip_name, env):
    return model_identity(env, "text_encoders", clip_name)


def _dual_check(clip_name1, clip_name2, env):
    problems = [missing_model(env, "text_encoders", "text encoder", name) for name in (clip_name1, clip_name2)]
    return "; ".join(p for p in problems if p) or None


def _dual_key(clip_name1, clip_name2, env):
    return (model_identity(env, "text_encoders", clip_name1), model_identity(env, "text_encoders", clip_name2))


def _clip(ctx: NodeContext, names: list[str], clip_type: str, device: str) -> TextModel:
    placement, cache = services(ctx)
    if device == "cpu":  # ComfyUI's device=cpu: the text encoders stay and run on the CPU
        placement = Placement(torch.device("cpu"), {**placement.dtypes, "text": torch.float32}, False)
    paths = [ctx.env.find_model("text_encoders", name) for name in names]

    def load():
        arch, encoders = load_clip_files(paths, clip_type, placement.dtypes["text"],
                                         hold=placement.device.type == "cpu")  # as checkpoints: cast per layer
        return arch, {name: enc.to(placement.home) for name, enc in encoders.items()}

    key = ("clip", tuple(file_key(p) for p in paths), clip_type, placement.key())
    arch, encoders = cache.get_or_load(key, load)
    return TextModel(arch, encoders, placement, embedding_dirs=tuple(ctx.env.folders("embeddings")))


@node(category="advanced/loaders", display_name="Load CLIP", outputs=[CLIP], fingerprint=_clip_key,
      validate=_clip_check)
def CLIPLoader(
    clip_name: Annotated[str, Combo(model_files("text_encoders"))],
    type: Annotated[str, Combo(list(CLIP_TYPES))],
    ctx: NodeContext,
    device: Annotated[str, DEVICES] = "default",
) -> TextModel:
    """Loads one text encoder from text_encoders/: stable_diffusion takes CLIP-L (SD1.x),
    OpenCLIP-H (SD2.x) or OpenCLIP-bigG (the SDXL refiner), told apart from the file."""
    return _clip(ctx, [clip_name], type, device)


@node(category="advanced/loaders", display_name="DualCLIPLoader", outputs=[CLIP], fingerprint=_dual_key,
      validate=_dual_check)
def DualCLIPLoader(
    clip_name1: Annotated[str, Combo(model_files("text_encoders"))],
    clip_name2: Annotated[str, Combo(model_files("text_encoders"))],
    type: Annotated[str, Combo(list(DUAL_CLIP_TYPES))],
    ctx: NodeContext,
    device: Annotated[str, DEVICES] = "default",
) -> TextModel:
    """Loads two text encoders from text_encoders/: sdxl takes CLIP-L and OpenCLIP-bigG in either order."""
    return _clip(ctx, [clip_name1, clip_name2], type, device)


def diffusers_folders(env) -> list[str]:
    """Folders holding a model_index.json under the diffusers folders, as relative POSIX paths."""
    if env is None:
        return []
    found: set[str] = set()
    for root in env.folders("diffusers"):
        if root.is_dir():
            found.update(p.parent.relative_to(root).as_posix() for p in root.rglob("model_index.json"))
    return sorted(found)


def _find_folder(env, model_path: str) -> Path | None:
    for root in env.folders("diffusers"):
        folder = (root / model_path).resolve()
        if folder.is_relative_to(root.resolve()) and (folder / "model_index.json").is_file():
            return folder
    return None


def _diffusers_check(model_path, env):
    if _find_folder(env, model_path) is None:
        folders = ", ".join(str(f) for f in env.folders("diffusers"))
        return f"diffusers folder '{model_path}' not found (a folder with a model_index.json; searched: {folders})"
    return None


def _diffusers_key(model_path, env):
    folder = _find_folder(env, model_path)
    if folder is None:
        return ("missing", model_path)
    return tuple(file_identity(p) for p in folder_parts(folder).values() if p is not None)


@node(category="advanced/loaders/deprecated", display_name="DiffusersLoader",
      outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
      fingerprint=_diffusers_key, validate=_diffusers_check)
def DiffusersLoader(model_path: Annotated[str, Combo(diffusers_folders)], ctx: NodeContext) -> tuple:
    """Loads a diffusers folder (unet/, vae/, text_encoder/, text_encoder_2/) of SD1.x, SD2.x or SDXL."""
    placement, cache = services(ctx)
    folder = _find_folder(ctx.env, model_path)

    def load():
        unet, arch, encoders, vae = load_diffusers_folder(folder, placement.dtypes)
        return (unet.to(placement.home), arch, {n: e.to(placement.home) for n, e in encoders.items()},
                vae.to(placement.home))

    key = ("diffusers", _diffusers_key(model_path, ctx.env), placement.key())
    unet, arch, encoders, vae = cache.get_or_load(key, load)
    model = SDModel(unet, arch, schedule_for(arch), placement)
    clip = TextModel(arch, encoders, placement, embedding_dirs=tuple(ctx.env.folders("embeddings")))
    return model, clip, VAEModel(vae, placement)
