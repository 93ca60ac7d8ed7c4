"""ComfyUI's ``comfy.sampler_helpers``: conditioning in the form a CFGGuider keeps it
(``convert_cond``), noise masks at latent size, and the "additional models" bookkeeping that
packs call around sampling."""

from __future__ import annotations

import uuid

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.sampling.ksampler import prepare_denoise_mask

__all__ = ["cleanup_additional_models", "convert_cond", "get_additional_models", "get_models_from_cond",
           "prepare_mask"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def convert_cond(cond: list) -> list[dict]:
    """CONDITIONING ``[[tensor, options], ...]`` -> one dict per entry: a copy of its options
    with the tensor as ``cross_attn``, ``model_conds`` (empty unless the options had some) and a
    fresh ``uuid``, as ComfyUI's CFGGuider keeps its conditionings (``original_conds``)."""
    out = []
    for i, entry in enumerate(cond):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[1], dict):
            raise TypeError(f"comfy.sampler_helpers.convert_cond: entry {i} is not a [tensor, options] pair "
                            f"(got {type(entry).__name__})")
        converted = dict(entry[1])
        converted["model_conds"] = converted.get("model_conds", {})
        if entry[0] is not None:
            converted["cross_attn"] = entry[0]
        converted["uuid"] = uuid.uuid4()
        out.append(converted)
    return out


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """A noise mask at latent size (B, C, h, w) on ``device`` (bilinear, repeated over channels
    and batch)."""
    if len(shape) != 4:
        raise ValueError(f"comfy.sampler_helpers.prepare_mask: a latent shape (B, C, h, w) is expected, got "
                         f"{tuple(shape)}")
    return prepare_denoise_mask(noise_mask, torch.Size(shape)).to(device)


def get_models_from_cond(cond: list[dict], model_type: str) -> list:
    """The ``model_type`` values ("control", "gligen", ...) of converted conditioning entries."""
    models = []
    for c in cond:
        if model_type in c:
            models += c[model_type] if isinstance(c[model_type], list) else [c[model_type]]
    return models


def get_additional_models(conds: dict, dtype) -> tuple[list, int]:
    """The extra models ComfyUI loads onto the GPU before sampling, and their memory: none here
    (a memory-management call: latentgraph moves a control's network when it runs)."""
    return [], 0


def cleanup_additional_models(models) -> None:
    """Call ``cleanup()`` on each of ``models`` that has one."""
    for m in models:
        if hasattr(m, "cleanup"):
            m.cleanup()
