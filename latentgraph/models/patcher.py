"""Model options in ComfyUI's shape, and the methods that set them (its ModelPatcher's names).

A MODEL value carries ``model_options``, a dict that custom nodes fill with callables::

    {"transformer_options": {"patches": {"attn1_patch": [f, ...], ...},
                             "patches_replace": {"attn1": {("input", 1): f, ("input", 1, 0): f}, ...}},
     "model_function_wrapper": f, "sampler_cfg_function": f,
     "sampler_pre_cfg_function": [f, ...], "sampler_post_cfg_function": [f, ...],
     "sampler_calc_cond_batch_function": f, "denoise_mask_function": f,
     "disable_cfg1_optimization": bool}

The UNet (``models/unet.py``) and CFG (``sampling/guidance.py``) call them at ComfyUI's points
with ComfyUI's arguments; docs/model-options.md is the contract. The pattern is ComfyUI's:
``m = model.clone(); m.set_model_attn1_patch(f); return m`` — the ``set_*`` methods change the
object they are called on, so a node clones first and the input model is never changed.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

# the transformer patch lists the UNet calls (see docs/model-options.md for each signature)
PATCH_NAMES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch",
               "input_block_patch", "input_block_patch_after_skip", "output_block_patch", "emb_patch")
REPLACE_NAMES = ("attn1", "attn2")
BLOCK_NAMES = ("input", "middle", "output")
# ComfyUI's WrappersMP names for the wrapper points we have (docs/model-options.md, "Wrappers")
WRAPPER_TYPES = ("outer_sample", "predict_noise", "diffusion_model")


def new_model_options() -> dict:
    """Empty options: only the transformer_options dict that ComfyUI always has."""
    return {"transformer_options": {}}


def copy_options(value: Any) -> Any:
    """A copy of every dict and list in ``value`` (nested), sharing everything else: tensors,
    functions and other objects stay the same objects, so a clone costs no memory."""
    if isinstance(value, dict):
        return {k: copy_options(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_options(v) for v in value]
    return value


def is_patched(transformer_options: dict | None) -> bool:
    """Whether the UNet has anything to call: non-empty patch lists or replacements."""
    if not transformer_options:
        return False
    return any(transformer_options.get("patches", {}).values()) or \
        any(transformer_options.get("patches_replace", {}).values())


class ModelPatcher:
    """ComfyUI's ``set_model_*`` methods over ``self.model_options``. A subclass provides
    ``clone()`` (a new object with ``copy_options`` of the options) and the attribute."""

    model_options: dict

    def clone(self) -> "ModelPatcher":
        raise NotImplementedError

    # -- transformer patches (lists, called in the order they were added) -------------------
    def set_model_patch(self, patch: Callable, name: str) -> None:
        if not callable(patch):
            raise TypeError(f"set_model_patch({name!r}): the patch must be callable, got {type(patch).__name__}")
        to = self.model_options.setdefault("transformer_options", {})
        patches = to.setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]  # a new list: a clone's list is never shared

    def set_model_patch_replace(self, patch: Callable, name: str, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        """Replace the attention ``name`` ("attn1"/"attn2") of the transformers of block
        (block_name, number), or of one transformer block in it when transformer_index is given."""
        if not callable(patch):
            raise TypeError(f"set_model_patch_replace({name!r}): the patch must be callable, "
                            f"got {type(patch).__name__}")
        if block_name not in BLOCK_NAMES:
            raise ValueError(f"set_model_patch_replace: block_name must be one of {', '.join(BLOCK_NAMES)}, "
                             f"not {block_name!r}")
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        to = self.model_options.setdefault("transformer_options", {})
        to.setdefault("patches_replace", {}).setdefault(name, {})[key] = patch

    def set_model_attn1_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch: Callable, block_name: str, number: int,
                                transformer_index: int | None = None) -> None:
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch: Callable) -> None:
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "output_block_patch")

    def set_model_emb_patch(self, patch: Callable) -> None:
        self.set_model_patch(patch, "emb_patch")

    # -- whole-call functions ------------------------------------------------------------------
    def set_model_unet_function_wrapper(self, wrapper: Callable) -> None:
        self.model_options["model_function_wrapper"] = wrapper

    def set_model_sampler_cfg_function(self, sampler_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> None:
        fn = sampler_cfg_function
        if _positional_count(fn) == 3:  # ComfyUI's first form: f(cond, uncond, cond_scale)
            def fn(args, old=sampler_cfg_function):
                return old(args["cond"], args["uncond"], args["cond_scale"])
        self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function: Callable,
                                            disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_post_cfg_function", post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function: Callable,
                                           disable_cfg1_optimization: bool = False) -> None:
        self._append("sampler_pre_cfg_function", pre_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_calc_cond_batch_function(self, fn: Callable) -> None:
        self.model_options["sampler_calc_cond_batch_function"] = fn

    def set_model_denoise_mask_function(self, fn: Callable) -> None:
        self.model_options["denoise_mask_function"] = fn

    def add_wrapper_with_key(self, wrapper_type: str, key: str, fn: Callable) -> None:
        """Wrap a whole sampling run, a guided prediction or a UNet call (ComfyUI's name; the
        executor is a plain callable here, see docs/model-options.md)."""
        if wrapper_type not in WRAPPER_TYPES:
            raise ValueError(f"wrapper type {wrapper_type!r}: expected one of {', '.join(WRAPPER_TYPES)}")
        if not callable(fn):
            raise TypeError(f"wrapper {wrapper_type}/{key}: the function must be callable, got {type(fn).__name__}")
        to = self.model_options.setdefault("transformer_options", {})
        to.setdefault("wrappers", {}).setdefault(wrapper_type, {}).setdefault(key, []).append(fn)

    def _append(self, key: str, fn: Callable, disable_cfg1_optimization: bool) -> None:
        if not callable(fn):
            raise TypeError(f"{key}: the function must be callable, got {type(fn).__name__}")
        self.model_options[key] = self.model_options.get(key, []) + [fn]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True


def call_wrapped(transformer_options: dict | None, wrapper_type: str, inner: Callable, *args) -> Any:
    """``inner(*args)`` through the wrappers of ``wrapper_type``: each is called as
    ``f(executor, *args)`` and ``executor(*args)`` runs the next one (the first added is the
    outermost, as ComfyUI orders them); with none set it is just ``inner(*args)``."""
    by_key = (transformer_options or {}).get("wrappers", {}).get(wrapper_type)
    if not by_key:
        return inner(*args)
    fns = [f for group in by_key.values() for f in group]
    call = inner
    for f in reversed(fns):
        call = (lambda f, nxt: lambda *a: f(nxt, *a))(f, call)
    return call(*args)


def _positional_count(fn: Callable) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # builtins without a signature take the one-dict form
        return 1
