"""ComfyUI's ``nodes`` module: MAX_RESOLUTION, and latentgraph's built-in nodes as V1 classes
(``NODE_CLASS_MAPPINGS["KSampler"]().sample(...)``, as packs reuse ComfyUI's core nodes). The
mappings also hold the classes of every ComfyUI pack loaded in the process (comfy_compat.PACK_NODES).

Each class is made from the node's declaration: ``INPUT_TYPES`` is its /object_info entry,
``RETURN_TYPES``/``RETURN_NAMES``/``CATEGORY``/``OUTPUT_NODE`` as ComfyUI shows them. The method
has ComfyUI's name and parameter order (``VAEEncode().encode(vae, pixels)``,
``KSampler().sample(model, seed, ...)``: recorded from ComfyUI's source in node_methods.json by
tools/comfy_node_methods.py; a node ComfyUI lacks gets ``run`` and its input order). A node
ComfyUI has since made a V3 node keeps its older V1 name (``ImageUpscaleWithModel().upscale``)
and also answers V3's ``Class.execute(...)``. It runs
latentgraph's node within the running node's context (its folders, models and progress) and
returns a tuple, or ``{"ui", "result"}`` when the node shows something. Parameters ComfyUI's
method takes that latentgraph's node does not model are accepted and ignored; any other name is
a TypeError naming it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from latentgraph.comfy_compat import runtime
from latentgraph.nodes.unclip import MissingClipVision

# ComfyUI's nodes imports these, so a pack that wrote `import comfy` reaches comfy.samplers
import comfy.clip_vision  # noqa: F401
import comfy.controlnet  # noqa: F401
import comfy.model_management  # noqa: F401
import comfy.sample  # noqa: F401
import comfy.samplers  # noqa: F401
import comfy.sd  # noqa: F401
import comfy.utils  # noqa: F401

_IMPORTED = (comfy.clip_vision, comfy.controlnet, comfy.model_management, comfy.sample, comfy.samplers, comfy.sd,
             comfy.utils)

MAX_RESOLUTION = 16384
# pack name -> its web folder: packs may add themselves here instead of setting WEB_DIRECTORY
# (Impact); latentgraph's loader reads what a pack added as that pack's web folder
EXTENSION_WEB_DIRS: dict[str, str] = {}


def __getattr__(name: str):
    if name in ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"):
        from latentgraph.comfy_compat import PACK_NODES

        classes = _classes()  # one dict for the process, as ComfyUI's: the loaded packs' classes join it
        classes.update({n: cls for n, (cls, _) in PACK_NODES.items()})
        if name == "NODE_CLASS_MAPPINGS":
            return classes
        shown = {n: shown for n, (_, shown) in PACK_NODES.items()}
        return {n: shown.get(n) or getattr(c, "_display_name", n) for n, c in classes.items()}
    classes = _classes()
    if name in classes:  # nodes.KSampler, nodes.CheckpointLoaderSimple, ...
        return classes[name]
    raise runtime.missing(__name__, name)


@functools.lru_cache(maxsize=1)
def _classes() -> dict[str, type]:
    from latentgraph.nodes import create_registry

    registry = create_registry()
    return {name: v1_class(registry[name]) for name in registry.names()}


FUNCTION_NAME = "run"  # for a node ComfyUI has no method name for
# class attributes ComfyUI's core classes carry and packs read: an input's choices
_CHOICE_ATTRS = {"upscale_methods": "upscale_method", "crop_methods": "crop", "rescale_methods": "rescale_method"}


@functools.lru_cache(maxsize=1)
def comfy_methods() -> dict[str, dict]:
    """ComfyUI's method name and parameter order per core node (node_methods.json)."""
    return json.loads((Path(__file__).with_name("node_methods.json")).read_text(encoding="utf-8"))["nodes"]


def v1_class(ndef) -> type:
    """A V1 class running ``ndef``."""
    info = ndef.object_info()
    recorded = comfy_methods().get(ndef.name, {})
    function = recorded.get("function", FUNCTION_NAME)
    params = list(recorded.get("params") or [*ndef.inputs, *ndef.hidden])
    ours = set(ndef.inputs) | set(ndef.hidden)

    def input_types(cls) -> dict:
        return ndef.object_info(runtime.current_env())["input"]

    def method(self, *args, **kwargs) -> Any:
        if len(args) > len(params):
            raise TypeError(f"{ndef.name}.{function}() takes {len(params)} arguments ({', '.join(params)}), "
                            f"{len(args)} were given")
        for name, value in zip(params, args):
            if name in kwargs:
                raise TypeError(f"{ndef.name}.{function}() got two values for '{name}'")
            kwargs[name] = value
        unknown = [k for k in kwargs if k not in ours and k not in params]
        if unknown:
            raise TypeError(f"{ndef.name}.{function}() has no parameter {', '.join(map(repr, unknown))} "
                            f"(it takes {', '.join(params)})")
        return call_builtin(ndef, {k: v for k, v in kwargs.items() if k in ours})

    method.__name__ = function
    extra = {}
    if recorded.get("read_from") or not recorded:
        # ComfyUI made it a V3 node (or has no V1 record): packs for newer versions call
        # Class.execute(...) and index the NodeOutput; the tuple answers [0] the same way
        extra["execute"] = classmethod(lambda cls, *args, **kwargs: _node_output(method(None, *args, **kwargs)))
    for attr, input_name in _CHOICE_ATTRS.items():  # ImageScale.upscale_methods, ...: its combo's choices
        spec = ndef.inputs.get(input_name)
        choices = getattr(spec, "choices", None)
        if choices and not callable(choices):
            extra[attr] = list(choices)
    attrs = {**extra, "INPUT_TYPES": classmethod(input_types), "RETURN_TYPES": tuple(info["output"]),
             "RETURN_NAMES": tuple(info["output_name"]), "OUTPUT_IS_LIST": tuple(info["output_is_list"]),
             "FUNCTION": function, "CATEGORY": info["category"], "OUTPUT_NODE": info["output_node"],
             "DESCRIPTION": info["description"], "_display_name": info["display_name"], function: method,
             "__doc__": ndef.description or None, "_latentgraph_node": ndef}
    return type(ndef.name, (), attrs)


def _node_output(ret) -> Any:
    """A V1 return value as V3's NodeOutput (``.result``, ``[i]``, ``.ui``)."""
    with runtime.allow_imports():
        from comfy_api.latest import io
    if isinstance(ret, dict):
        return io.NodeOutput(*ret.get("result", ()), ui=ret.get("ui"))
    return io.NodeOutput(*ret)


def call_builtin(ndef, kwargs: dict) -> Any:
    """Run a built-in node from a pack's code: declared defaults fill what is not given."""
    from latentgraph.graph.calls import read_return
    from latentgraph.graph.context import NodeContext
    from latentgraph.graph.types import MISSING

    args = {n: s.default for n, s in ndef.inputs.items() if n not in kwargs and s.default is not MISSING
            and not s.optional}
    args.update(kwargs)
    for name in ndef.hidden:  # a hidden input the caller did not give (prompt, extra_pnginfo) is None
        args.setdefault(name, None)
    if ndef.context_param:
        ctx = runtime.current_node()
        if ctx is None:  # called outside a run (a script): a context of its own
            import threading

            from latentgraph.nodes import create_services

            env = runtime.current_env()
            ctx = NodeContext("?", ndef.name, "?", env, create_services(env), lambda kind, data: None,
                              threading.Event())
        args[ndef.context_param] = ctx
    call = read_return(ndef, ndef.fn(**args))
    values = call.values if call.values is not None else ()
    # unCLIPCheckpointLoader's CLIP_VISION of a checkpoint without an image encoder is None in
    # ComfyUI, and packs test for that (latentgraph's own graphs get a value that names the file)
    values = tuple(None if isinstance(v, MissingClipVision) else v for v in values)
    return {"ui": call.ui, "result": values} if call.ui else values


def common_ksampler(model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list,
                    negative: list, latent: dict, denoise: float = 1.0, disable_noise: bool = False,
                    start_step: int | None = None, last_step: int | None = None,
                    force_full_denoise: bool = False) -> tuple[dict]:
    """KSampler and KSamplerAdvanced's shared body: sample a LATENT dict (its batch_index and
    noise_mask read) with the running node's progress; ``(latent,)``."""
    import torch

    import comfy.sample
    import comfy.utils
    import latent_preview

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.shape, dtype=latent_image.dtype, device="cpu")
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                                  denoise=denoise, disable_noise=disable_noise, start_step=start_step,
                                  last_step=last_step, force_full_denoise=force_full_denoise,
                                  noise_mask=latent.get("noise_mask"), callback=callback,
                                  disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    out = latent.copy()
    out["samples"] = samples
    return (out,)
