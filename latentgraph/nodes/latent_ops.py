"""Everyday latent nodes of ComfyUI core: arithmetic (add, subtract, multiply, interpolate,
blend), batching (LatentBatch, LatentBatchSeedBehavior), transforms (crop, flip, rotate),
LatentCompositeMasked, and the .latent files (SaveLatent, LoadLatent).

Names, inputs, defaults and numerics are ComfyUI 0.3.64's. As everywhere in nodes/, an input
dict is copied and only the keys a node changes are replaced."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
load_file = lazy("safetensors.torch", "load_file")
save = lazy("safetensors.torch", "save")

from ..graph import LATENT, MASK, Boolean, Combo, Float, Hidden, Int, NodeContext, Result, String, file_identity, node
from ..graph.fileio import write_atomic
from .budget import check_tensor, human_bytes
from .image import MAX_RESOLUTION, composite, upscale
from .imageio import PNG_METADATA_BUDGET, _bounded_json, save_path

Tensor = lazy("torch", "Tensor")
# ComfyUI's SD1 latent scale: a .latent file without latent_format_version_0 holds scaled samples
OLD_LATENT_SCALE = 0.18215
# a safetensors header is JSON describing the tensors; ComfyUI's holds two tensors and the prompt
LATENT_HEADER_BUDGET = 100 * 2**20


def _match_to(target: Tensor, other: Tensor, repeat_batch: bool, what: str) -> Tensor:
    """``other`` made to fit ``target`` (B, C, H, W) as ComfyUI's latent maths does: a different
    size is resized (bilinear, centre-cropped to the aspect) to target's, then the batch is cut
    or cycled to target's (unless ``repeat_batch`` is False)."""
    if other.shape[1:] != target.shape[1:]:
        if other.ndim != target.ndim or other.shape[1] != target.shape[1]:
            raise ValueError(f"{what}: latents of shape {tuple(other.shape)} and {tuple(target.shape)} have "
                             f"different channels or dimensions (from different model families?)")
        h, w = target.shape[-2:]
        check_tensor((other.shape[0], other.shape[1], h, w), f"{what}: resizing {tuple(other.shape)}", "a latent")
        other = upscale(other, w, h, "bilinear", "center")
    if repeat_batch and other.shape[0] != target.shape[0]:
        n = target.shape[0]
        if other.shape[0] > n:
            return other[:n]
        return other.repeat((-(-n // other.shape[0]),) + (1,) * (other.ndim - 1))[:n]
    return other


@node(category="latent/advanced", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentAdd(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT]) -> dict:
    """samples1 + samples2 (samples2 resized and its batch cycled to samples1's)."""
    s1 = samples1["samples"]
    out = dict(samples1)
    out["samples"] = s1 + _match_to(s1, samples2["samples"], True, "LatentAdd")
    return out


@node(category="latent/advanced", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentSubtract(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT]) -> dict:
    """samples1 - samples2 (samples2 resized and its batch cycled to samples1's)."""
    s1 = samples1["samples"]
    out = dict(samples1)
    out["samples"] = s1 - _match_to(s1, samples2["samples"], True, "LatentSubtract")
    return out


@node(category="latent/advanced", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentMultiply(samples: Annotated[dict, LATENT],
                   multiplier: Annotated[float, Float(1.0, min=-10.0, max=10.0, step=0.01)]) -> dict:
    """Scales the latent by ``multiplier``."""
    out = dict(samples)
    out["samples"] = samples["samples"] * multiplier
    return out


def _unit(x: Tensor, norm: Tensor) -> Tensor:
    """x / norm with 0/0 (a zero vector) as 0, as ComfyUI's nan_to_num gives."""
    return torch.nan_to_num(x / norm)


@node(category="latent/advanced", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentInterpolate(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT],
                      ratio: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)]) -> dict:
    """Blends the directions of the per-pixel channel vectors by ``ratio`` (1 = samples1) and
    their lengths linearly.

    The length is taken per item of the batch; ComfyUI's broadcast takes it right only for a
    batch of 1 (the same values then) and mixes items up or fails for larger batches."""
    s1 = samples1["samples"]
    s2 = _match_to(s1, samples2["samples"], True, "LatentInterpolate")
    m1 = torch.linalg.vector_norm(s1, dim=1, keepdim=True)  # (B, 1, H, W)
    m2 = torch.linalg.vector_norm(s2, dim=1, keepdim=True)
    t = _unit(s1, m1) * ratio + _unit(s2, m2) * (1.0 - ratio)
    out = dict(samples1)
    out["samples"] = _unit(t, torch.linalg.vector_norm(t, dim=1, keepdim=True)) * (m1 * ratio + m2 * (1.0 - ratio))
    return out


@node(category="_for_testing", display_name="Latent Blend", outputs=[LATENT])
def LatentBlend(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT],
                blend_factor: Annotated[float, Float(0.5, min=0, max=1, step=0.01)]) -> dict:
    """samples1 * blend_factor + samples2 * (1 - blend_factor); samples2 of another size is
    resized to samples1's (bicubic, centre-cropped), as in ComfyUI."""
    s1, s2 = samples1["samples"], samples2["samples"]
    if s1.shape != s2.shape:
        if s1.shape[0] != s2.shape[0] or s1.shape[1] != s2.shape[1] or s1.ndim != s2.ndim:
            raise ValueError(f"LatentBlend: samples2 of shape {tuple(s2.shape)} cannot blend with samples1 of "
                             f"{tuple(s1.shape)}: batch sizes and channels must match")
        s2 = upscale(s2, s1.shape[-1], s1.shape[-2], "bicubic", "center")
    out = dict(samples1)
    out["samples"] = s1 * blend_factor + s2 * (1 - blend_factor)
    return out


@node(category="latent/batch", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentBatch(samples1: Annotated[dict, LATENT], samples2: Annotated[dict, LATENT]) -> dict:
    """samples2's items after samples1's (resized to samples1's size); batch indices follow."""
    s1, s2 = samples1["samples"], samples2["samples"]
    check_tensor((s1.shape[0] + s2.shape[0], *s1.shape[1:]),
                 f"LatentBatch of {s1.shape[0]} + {s2.shape[0]} items", "a latent")
    s2 = _match_to(s1, s2, False, "LatentBatch")
    out = dict(samples1)
    out["samples"] = torch.cat((s1, s2.to(s1)), dim=0)
    first = samples1.get("batch_index", list(range(s1.shape[0])))
    out["batch_index"] = list(first) + list(samples2.get("batch_index", range(s2.shape[0])))
    return out


@node(category="latent/advanced", outputs=[LATENT], python_module="comfy_extras.nodes_latent")
def LatentBatchSeedBehavior(samples: Annotated[dict, LATENT],
                            seed_behavior: Annotated[str, Combo(("random", "fixed"), default="fixed")]) -> dict:
    """"fixed": every item takes the first item's noise; "random": each its own (batch_index dropped)."""
    out = dict(samples)
    if seed_behavior == "random":
        out.pop("batch_index", None)
    else:
        first = samples.get("batch_index", [0])[0]
        out["batch_index"] = [first] * samples["samples"].shape[0]
    return out


@node(category="latent/transform", display_name="Crop Latent", outputs=[LATENT])
def LatentCrop(
    samples: Annotated[dict, LATENT],
    width: Annotated[int, Int(512, min=64, max=MAX_RESOLUTION, step=8)],
    height: Annotated[int, Int(512, min=64, max=MAX_RESOLUTION, step=8)],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
) -> dict:
    """Cuts width x height pixels at (x, y); the corner is moved in so that at least 64 pixels
    remain, and the crop is cut at the latent's edges.

    A latent under 64 pixels wide or high is cropped from 0 (ComfyUI's corner goes negative
    there and slices from the far end)."""
    s = samples["samples"]
    x = max(0, min(x // 8, s.shape[-1] - 8))
    y = max(0, min(y // 8, s.shape[-2] - 8))
    out = dict(samples)
    out["samples"] = s[..., y:y + height // 8, x:x + width // 8]
    return out


@node(category="latent/transform", display_name="Flip Latent", outputs=[LATENT])
def LatentFlip(samples: Annotated[dict, LATENT],
               flip_method: Annotated[str, Combo(("x-axis: vertically", "y-axis: horizontally"))]) -> dict:
    """Mirrors the latent: x-axis flips top and bottom, y-axis left and right."""
    out = dict(samples)
    out["samples"] = torch.flip(samples["samples"], dims=[-2 if flip_method.startswith("x") else -1])
    return out


@node(category="latent/transform", display_name="Rotate Latent", outputs=[LATENT])
def LatentRotate(samples: Annotated[dict, LATENT],
                 rotation: Annotated[str, Combo(("none", "90 degrees", "180 degrees", "270 degrees"))]) -> dict:
    """Rotates the latent clockwise by a quarter turn or more."""
    quarters = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
    out = dict(samples)
    out["samples"] = torch.rot90(samples["samples"], k=quarters, dims=[3, 2])
    return out


@node(category="latent", display_name="LatentCompositeMasked", outputs=[LATENT],
      python_module="comfy_extras.nodes_mask")
def LatentCompositeMasked(
    destination: Annotated[dict, LATENT],
    source: Annotated[dict, LATENT],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    resize_source: Annotated[bool, Boolean(False)],
    mask: Annotated[Tensor | None, MASK(optional=True)] = None,
) -> dict:
    """Pastes source into destination at (x, y) pixels (multiples of 8), through an optional
    mask (resized to the source's latent size), as ImageCompositeMasked does for images."""
    dest, src = destination["samples"], source["samples"]
    if dest.ndim != 4 or src.ndim != 4 or dest.shape[1] != src.shape[1]:
        raise ValueError(f"LatentCompositeMasked: source {tuple(src.shape)} and destination {tuple(dest.shape)} "
                         f"must be 4-dimensional latents with the same channels")
    # the image composite works on [B, H, W, C]; a latent is [B, C, H, W] in steps of 8 pixels
    pasted = composite(dest.movedim(1, -1), src.movedim(1, -1), x // 8, y // 8, mask, resize_source)
    out = dict(destination)
    out["samples"] = pasted.movedim(-1, 1).contiguous()
    return out


@node(category="_for_testing", display_name="SaveLatent", output_node=True)
def SaveLatent(
    samples: Annotated[dict, LATENT],
    filename_prefix: Annotated[str, String("latents/ComfyUI")],
    prompt: Annotated[dict, Hidden("PROMPT")],
    extra_pnginfo: Annotated[dict, Hidden("EXTRA_PNGINFO")],
    ctx: NodeContext,
) -> Result:
    """Saves the latent as a ComfyUI .latent file (safetensors: latent_tensor and an empty
    latent_format_version_0; the prompt and workflow as JSON metadata) in the output folder."""
    folder, stem, subfolder, counter = save_path(ctx.env.output_dir, filename_prefix)
    metadata = {"prompt": _bounded_json(prompt, "prompt", PNG_METADATA_BUDGET, PNG_METADATA_BUDGET)
                if prompt is not None else ""}
    left = PNG_METADATA_BUDGET - len(metadata["prompt"])
    for key, value in (extra_pnginfo or {}).items():
        metadata[str(key)] = _bounded_json(value, str(key), left, PNG_METADATA_BUDGET)
        left -= len(metadata[str(key)])
    name = f"{stem}_{counter:05}_.latent"
    tensors = {"latent_tensor": samples["samples"].contiguous(), "latent_format_version_0": torch.tensor([])}
    write_atomic(folder / name, save(tensors, metadata=metadata))
    return Result(ui={"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]})


def _latent_files(env) -> list[str]:
    """The .latent files directly in the input folder (ComfyUI lists no subfolders here)."""
    folder = env.input_dir if env else None
    if folder is None or not Path(folder).is_dir():
        return []
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name.endswith(".latent"))


def _latent_fingerprint(latent: str, env):
    path = env.annotated_path(latent)
    return file_identity(path, content_hash=True) if path is not None else ("invalid", latent)


def _latent_validate(latent: str, env):
    path = env.annotated_path(latent)
    if path is None or not path.is_file():
        return f"Invalid latent file: {latent}"
    return None


def check_latent_file(path: Path, name: str) -> None:
    """Read only the safetensors header of ``path`` and refuse, before any tensor is read, a
    file that is not safetensors, has no latent_tensor, or whose tensors exceed tensor_bytes."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"latent file {name!r} is not a safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > min(LATENT_HEADER_BUDGET, size - 8):
            raise ValueError(f"latent file {name!r} is not a safetensors file, or its header of {n:,} bytes "
                             f"exceeds LATENT_HEADER_BUDGET = {human_bytes(LATENT_HEADER_BUDGET)}")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"latent file {name!r} has an unreadable safetensors header: {exc}") from exc
    entry = header.get("latent_tensor") if isinstance(header, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
        raise ValueError(f"latent file {name!r} holds no latent_tensor (keys: "
                         f"{', '.join(k for k in header if k != '__metadata__') or 'none'})")
    shape = entry["shape"]
    if len(shape) not in (4, 5) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError(f"latent file {name!r}: latent_tensor has shape {shape}; a latent has 4 or 5 dimensions")
    # the float32 copy LoadLatent makes is the largest tensor it allocates
    check_tensor(shape, f"latent file {name!r} with latent_tensor {shape}", "a latent")


@node(category="_for_testing", display_name="LoadLatent", outputs=[LATENT],
      fingerprint=_latent_fingerprint, validate=_latent_validate)
def LoadLatent(latent: Annotated[str, Combo(_latent_files)], ctx: NodeContext) -> dict:
    """Loads a .latent file (safetensors, never a pickle) from the input folder. A file without
    latent_format_version_0 is from before ComfyUI's format change and is divided by 0.18215."""
    path = ctx.env.annotated_path(latent)
    check_latent_file(path, latent)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise ValueError(f"cannot read latent file {latent!r}: {exc}") from exc
    scale = 1.0 if "latent_format_version_0" in tensors else 1.0 / OLD_LATENT_SCALE
    return {"samples": tensors["latent_tensor"].float() * scale}
