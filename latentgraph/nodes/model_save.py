"""Saving models: CheckpointSave, ModelSave, CLIPSave, VAESave and LoraSave (Extract and Save Lora),
with ComfyUI's names, inputs, key layouts, metadata and file naming
(``<output>/<prefix folder>/<stem>_00001_.safetensors``, the counter one past the highest there).

CheckpointSave writes the original single-file layout that CheckpointLoaderSimple (ours and
ComfyUI's) reads; ModelSave the UNet alone under ``model.diffusion_model.``; CLIPSave one file
per text encoder in transformers' layout (``text_model.*``, ``text_projection.weight``,
``logit_scale``), named ``<prefix>_clip_l`` etc.; VAESave the VAE's keys unprefixed. Metadata is
ComfyUI's (``prompt`` and each extra_pnginfo key as JSON, ``modelspec.*`` for SDXL models,
``modelspec.predict_key``) plus latentgraph's architecture record for checkpoints and UNets, so
tiny and unusual models load back exactly.

Each file's size is known before it is written: it is checked against the free space of the
output folder, and written to a hidden temporary name first, so a failed write leaves no
truncated file under the final name.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")

from ..graph import CLIP, MODEL, VAE, Boolean, Combo, Hidden, Int, NodeContext, Result, String, node
original_layout = lazy("..models.checkpoint", "original_layout")
save_checkpoint = lazy("..models.checkpoint", "save_checkpoint")
TextModel = lazy("..models.clip", "TextModel")
_families = lazy("..models.families")  # METADATA_KEY and UNET_PREFIX, strs: read where used
Architecture = lazy("..models.families", "Architecture")
extract = lazy("..models.lora_extract", "extract")
text_name = lazy("..models.lora_extract", "text_name")
unet_name = lazy("..models.lora_extract", "unet_name")
_split_files = lazy("..models.split_files")  # TEXT_RECORD, a str
DiscreteSchedule = lazy("..sampling.schedule", "DiscreteSchedule")
from .budget import human_bytes
from .choices import LORA_TYPES
from .imageio import PNG_METADATA_BUDGET, _bounded_json, save_path
from .sd import SDModel, VAEModel

log = logging.getLogger("latentgraph.nodes")

_CATEGORY = "advanced/model_merging"
_MODULE = "comfy_extras.nodes_model_merging"
# ComfyUI's modelspec.architecture, for the families it names (others get no modelspec block)
MODELSPEC = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}
# space left free on the output folder's disk besides the file (its header, the file system)
DISK_MARGIN = 64 * 2**20
# logit_scale in CLIPSave files (CLIP's temperature: text encoding never reads it): ComfyUI writes
# its CLIP-L default, 4.6055, and for OpenCLIP encoders the checkpoint's, ln(100) = 4.6052
LOGIT_SCALE = {"l": 4.6055, "h": 4.6052, "g": 4.6052}


def _metadata(prompt: dict | None, extra_pnginfo: dict | None) -> dict[str, str]:
    """ComfyUI's: the API prompt as JSON ("" without one) and each extra_pnginfo value as JSON,
    all together held to PNG_METADATA_BUDGET."""
    out = {"prompt": _bounded_json(prompt, "prompt", PNG_METADATA_BUDGET, PNG_METADATA_BUDGET)
           if prompt is not None else ""}
    left = PNG_METADATA_BUDGET - len(out["prompt"])
    for key, value in (extra_pnginfo or {}).items():
        out[str(key)] = _bounded_json(value, str(key), left, PNG_METADATA_BUDGET)
        left -= len(out[str(key)])
    return out


def _target(ctx: NodeContext, filename_prefix: str) -> tuple[Path, str, str, int, str]:
    """save_path in the output folder, plus the next file's name as ComfyUI gives it
    (<stem>_00001_.safetensors)."""
    folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix)
    return folder, stem, subfolder, counter, f"{stem}_{counter:05}_.safetensors"


def write_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str], what: str) -> int:
    """Write a safetensors file (CPU copies of the tensors, sorted metadata) after checking the
    disk has room for it; returns its size. Errors name the node and the file."""
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(path.parent).free
    except OSError as exc:
        raise OSError(f"{what}: cannot create the output folder {path.parent}: {exc.strerror or exc}") from None
    if size + DISK_MARGIN > free:
        raise OSError(f"{what}: {path.name} needs {human_bytes(size)} and the disk of {path.parent} has "
                      f"{human_bytes(free)} free (keeping DISK_MARGIN, {human_bytes(DISK_MARGIN)}, spare)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    try:
        save_checkpoint(cpu, tmp, metadata)
        os.replace(tmp, path)
    except OSError as exc:
        raise OSError(f"{what}: could not write {path}: {exc.strerror or exc}") from None
    finally:  # whatever stopped the write (a full disk, an interrupt), no half file stays behind
        tmp.unlink(missing_ok=True)
    log.info("%s: wrote %s (%s)", what, path, human_bytes(size))
    return size


def _ui(subfolder: str, name: str) -> dict:
    # ComfyUI's save nodes return no UI; this entry lets a front door say where the file went
    return {"models": [{"filename": name, "subfolder": subfolder, "type": "output"}]}


def _sampling(model: SDModel, what: str) -> tuple[str, bool]:
    """The prediction and zero-SNR flag the model samples with: a file records eps or v only."""
    from ..sampling.schedule import DiscreteSchedule  # the class itself: a lazy proxy is not `is` it

    s = model.schedule
    # LCM, continuous EDM/V and other schedules are subclasses or other classes: a file cannot say so
    kind = s.prediction if type(s) is DiscreteSchedule else type(s).__name__
    if kind not in ("eps", "v"):
        raise ValueError(f"{what}: the model samples as {kind!r} (a ModelSampling node changed it); a checkpoint file "
                         f"records only eps or v prediction (and zsnr): save the model before that node")
    return s.prediction, bool(s.zsnr)


def _model_metadata(model: SDModel, arch: Architecture, stem: str, counter: int, prompt, extra) -> dict:
    meta = {}
    if arch.family in MODELSPEC:
        meta.update({"modelspec.architecture": MODELSPEC[arch.family], "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm", "modelspec.title": f"{stem} {counter}"})
    meta["modelspec.predict_key"] = "v" if arch.prediction == "v" else "epsilon"
    meta.update(_metadata(prompt, extra))
    meta[_families.METADATA_KEY] = arch.to_json()
    return meta


def _markers(tensors: dict, arch: Architecture) -> None:
    """ComfyUI's prediction markers: v_pred for any v model (SD2 included), ztsnr with it."""
    if arch.prediction == "v":
        tensors["v_pred"] = torch.tensor([])
    if arch.zsnr:
        tensors["ztsnr"] = torch.tensor([])


@node(category=_CATEGORY, display_name="Save Checkpoint", outputs=[], output_node=True, python_module=_MODULE)
def CheckpointSave(
    model: Annotated[SDModel, MODEL],
    clip: Annotated[TextModel, CLIP],
    vae: Annotated[VAEModel, VAE],
    filename_prefix: Annotated[str, String("checkpoints/ComfyUI")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves the model, CLIP and VAE as one checkpoint (original single-file layout) that
    CheckpointLoaderSimple loads back as they are."""
    what = "CheckpointSave"
    if clip.arch.family != model.arch.family:
        raise ValueError(f"{what}: clip is a {clip.arch.spec.label} text encoder and model a {model.arch.spec.label} "
                         f"UNet; one checkpoint holds one family")
    prediction, zsnr = _sampling(model, what)
    arch = replace(model.arch, vae=vae.vae.config, text={n: e.config for n, e in clip.encoders.items()},
                   prediction=prediction, zsnr=zsnr)
    tensors = original_layout(replace(arch, prediction="eps", zsnr=False), model.unet, vae.vae, clip.encoders)
    if arch.family == "sdxl":  # ComfyUI adds CLIP-L's position ids (0..76) to SDXL checkpoints, as published ones have
        tensors[arch.spec.text[0].prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
    _markers(tensors, arch)
    folder, stem, subfolder, counter, name = _target(ctx, filename_prefix)
    write_file(tensors, folder / name, _model_metadata(model, arch, stem, counter, prompt, extra_pnginfo), what)
    return Result(ui=_ui(subfolder, name))


@node(category=_CATEGORY, outputs=[], output_node=True, python_module=_MODULE)
def ModelSave(
    model: Annotated[SDModel, MODEL],
    filename_prefix: Annotated[str, String("diffusion_models/ComfyUI")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves the diffusion model (UNet) alone, keyed model.diffusion_model.* as ComfyUI."""
    prediction, zsnr = _sampling(model, "ModelSave")
    arch = replace(model.arch, prediction=prediction, zsnr=zsnr)
    tensors = {_families.UNET_PREFIX + k: v for k, v in model.unet.state_dict().items()}
    _markers(tensors, arch)
    folder, stem, subfolder, counter, name = _target(ctx, filename_prefix)
    write_file(tensors, folder / name, _model_metadata(model, arch, stem, counter, prompt, extra_pnginfo),
               "ModelSave")
    return Result(ui=_ui(subfolder, name))


def clip_file_tensors(encoder: torch.nn.Module, slot: str) -> dict[str, torch.Tensor]:
    """One text encoder in the layout of ComfyUI's CLIPSave files (transformers' CLIPTextModel
    names): text_model.*, text_projection.weight and logit_scale. An encoder without a projection
    (SD1's and SDXL's CLIP-L) gets none: ComfyUI writes the unused, never-loaded projection matrix
    its CLIP-L object holds (whatever memory it was given), and both loaders take the file
    without one."""
    sd = encoder.state_dict()
    out = {"text_model." + k[len("transformer."):]: v for k, v in sd.items()
           if k.startswith("transformer.") and not k.endswith(".position_ids")}
    if "text_projection.weight" in sd:
        out["text_projection.weight"] = sd["text_projection.weight"]
    out["logit_scale"] = torch.tensor(LOGIT_SCALE[slot])
    return out


@node(category=_CATEGORY, outputs=[], output_node=True, python_module=_MODULE)
def CLIPSave(
    clip: Annotated[TextModel, CLIP],
    filename_prefix: Annotated[str, String("clip/ComfyUI")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves each text encoder of the CLIP to its own file, <prefix>_clip_l, _clip_g or _clip_h."""
    metadata = {"format": "pt", **_metadata(prompt, extra_pnginfo)}
    files = []
    for slot in clip.arch.spec.text:
        folder, stem, subfolder, counter, name = _target(ctx, f"{filename_prefix}_clip_{slot.name}")
        encoder = clip.encoders[slot.name]
        # the encoder's exact shape (head count, activation) for CLIPLoader, as split files record it
        record = json.dumps({"name": slot.name, "config": encoder.config.to_dict()}, sort_keys=True)
        write_file(clip_file_tensors(encoder, slot.name), folder / name, {**metadata, _split_files.TEXT_RECORD: record}, "CLIPSave")
        files += _ui(subfolder, name)["models"]
    return Result(ui={"models": files})


@node(category=_CATEGORY, outputs=[], output_node=True, python_module=_MODULE)
def VAESave(
    vae: Annotated[VAEModel, VAE],
    filename_prefix: Annotated[str, String("vae/ComfyUI_vae")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves the VAE alone, its keys unprefixed (encoder.*, decoder.*), as VAELoader reads it."""
    folder, stem, subfolder, counter, name = _target(ctx, filename_prefix)
    write_file(dict(vae.vae.state_dict()), folder / name, _metadata(prompt, extra_pnginfo), "VAESave")
    return Result(ui=_ui(subfolder, name))


@node(category="_for_testing", display_name="Extract and Save Lora", outputs=[], output_node=True,
      experimental=True, python_module="comfy_extras.nodes_lora_extract")
def LoraSave(
    filename_prefix: Annotated[str, String("loras/ComfyUI_extracted_lora", extra={"multiline": False})],
    rank: Annotated[int, Int(8, min=1, max=4096, step=1)],
    lora_type: Annotated[str, Combo(list(LORA_TYPES))],
    bias_diff: Annotated[bool, Boolean(True)],
    ctx: NodeContext,
    model_diff: Annotated[SDModel | None, MODEL(optional=True, tooltip="The ModelSubtract output to be converted to "
                                                                      "a lora.")] = None,
    text_encoder_diff: Annotated[TextModel | None, CLIP(optional=True, tooltip="The CLIPSubtract output to be "
                                                                              "converted to a lora.")] = None,
) -> Result:
    """Extracts a LoRA (SVD of the given rank, or the whole differences) from a ModelMergeSubtract
    and/or CLIPMergeSubtract output and saves it in ComfyUI's key names (models/lora_extract.py)."""
    if model_diff is None and text_encoder_diff is None:
        return Result(ui={})  # ComfyUI writes nothing then, too
    tensors: dict[str, torch.Tensor] = {}
    if model_diff is not None:
        tensors.update(extract(model_diff.unet.named_parameters(), rank, lora_type, bias_diff, unet_name))
    if text_encoder_diff is not None:
        for slot, enc in text_encoder_diff.encoders.items():
            ctx.check_interrupt()
            tensors.update(extract(enc.named_parameters(), rank, lora_type, bias_diff, text_name(slot)))
    folder, stem, subfolder, counter, name = _target(ctx, filename_prefix)
    write_file(tensors, folder / name, {}, "LoraSave")
    return Result(ui=_ui(subfolder, name))
