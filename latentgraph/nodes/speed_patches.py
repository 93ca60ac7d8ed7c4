"""Approximate speed-ups, opt-in as ComfyUI offers them (issue 17): EasyCache and LazyCache
(skip model calls while the output is predicted to change little, sampling/step_cache.py) and
TomePatchModel (token merging in the full-resolution self-attention, models/speed_tome.py).
Names, inputs, defaults, ranges and outputs are ComfyUI 0.3.64's; each returns a clone and
leaves its input model as it was. Their cost in quality is measured in bench/speed_patches.py."""

from __future__ import annotations

from typing import Annotated

from ..graph.lazy import lazy
from ..graph import MODEL, Boolean, Float, Output, node
from .sd import SDModel

_step_cache = lazy("..sampling.step_cache")
_tome = lazy("..models.speed_tome")

_THRESHOLD = dict(min=0.0, max=3.0, step=0.01, tooltip="The threshold for reusing cached steps.")


def _percent(default: float, what: str, which: str) -> Float:
    return Float(default, min=0.0, max=1.0, step=0.01, tooltip=f"The relative sampling step to {what} use of {which}.")


@node(category="advanced/debug/model", display_name="EasyCache", description="Native EasyCache implementation.",
      outputs=[Output("MODEL", "MODEL", tooltip="The model with EasyCache.")], experimental=True,
      python_module="comfy_extras.nodes_easycache")
def EasyCache(
    model: Annotated[SDModel, MODEL(tooltip="The model to add EasyCache to.")],
    reuse_threshold: Annotated[float, Float(0.2, **_THRESHOLD)],
    start_percent: Annotated[float, _percent(0.15, "begin", "EasyCache")],
    end_percent: Annotated[float, _percent(0.95, "end", "EasyCache")],
    verbose: Annotated[bool, Boolean(False, tooltip="Whether to log verbose information.")],
) -> SDModel:
    m = model.clone()
    m.model_options["transformer_options"]["easycache"] = _step_cache.EasyCacheState(
        reuse_threshold, start_percent, end_percent, verbose)
    m.add_wrapper_with_key("outer_sample", "easycache", _step_cache.cache_run_wrapper)
    m.add_wrapper_with_key("predict_noise", "easycache", _step_cache.easycache_step_wrapper)
    m.add_wrapper_with_key("diffusion_model", "easycache", _step_cache.easycache_unet_wrapper)
    return m


@node(category="advanced/debug/model", display_name="LazyCache",
      description="A homebrew version of EasyCache - even 'easier' version of EasyCache to implement. Overall works "
                  "worse than EasyCache, but better in some rare cases AND universal compatibility with everything "
                  "in ComfyUI.",
      outputs=[Output("MODEL", "MODEL", tooltip="The model with LazyCache.")], experimental=True,
      python_module="comfy_extras.nodes_easycache")
def LazyCache(
    model: Annotated[SDModel, MODEL(tooltip="The model to add LazyCache to.")],
    reuse_threshold: Annotated[float, Float(0.2, **_THRESHOLD)],
    start_percent: Annotated[float, _percent(0.15, "begin", "LazyCache")],
    end_percent: Annotated[float, _percent(0.95, "end", "LazyCache")],
    verbose: Annotated[bool, Boolean(False, tooltip="Whether to log verbose information.")],
) -> SDModel:
    m = model.clone()
    m.model_options["transformer_options"]["easycache"] = _step_cache.LazyCacheState(
        reuse_threshold, start_percent, end_percent, verbose)
    m.add_wrapper_with_key("outer_sample", "lazycache", _step_cache.cache_run_wrapper)
    m.add_wrapper_with_key("predict_noise", "lazycache", _step_cache.lazycache_predict_wrapper)
    return m


@node(category="model_patches/unet", outputs=[MODEL], python_module="comfy_extras.nodes_tomesd")
def TomePatchModel(
    model: Annotated[SDModel, MODEL],
    ratio: Annotated[float, Float(0.3, min=0.0, max=1.0, step=0.01)],
) -> SDModel:
    m = model.clone()
    patch = _tome.TomePatch(ratio)
    m.set_model_attn1_patch(patch.attn1_patch)
    m.set_model_attn1_output_patch(patch.attn1_output_patch)
    m.add_wrapper_with_key("outer_sample", "tome", _tome.tome_run_wrapper)
    return m
