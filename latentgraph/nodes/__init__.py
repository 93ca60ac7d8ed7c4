"""The built-in nodes. They declare themselves with graph's API exactly as plugins do;
``register_builtins`` adds them to a registry, ``create_registry`` makes a ready one."""

from __future__ import annotations

from ..graph import NodeRegistry
from . import conditioning, image, latent, loaders, mask, primitives, sampling, vae
from . import attention_patches
from . import model_patches
from . import controlnet
from . import preprocessors
from . import gligen
from . import clip_vision
from . import unclip
from . import custom_sampling
from . import latent_ops
from . import images_extra
from . import inpaint
from . import strings
from . import rebatch
from . import animated
from . import latent_operations
from . import stitch
from . import upscale
from . import split_loaders
from . import merging, model_save
from . import hypernetwork
from . import model_sampling, ip2p
from . import core_extras
from . import guidance_patches
from . import speed_patches

BUILTIN_MODULES = (loaders, conditioning, sampling, latent, vae, image, mask, primitives)
BUILTIN_MODULES += (attention_patches,)
BUILTIN_MODULES += (model_patches,)
BUILTIN_MODULES += (controlnet,)
BUILTIN_MODULES += (preprocessors,)
BUILTIN_MODULES += (gligen,)
BUILTIN_MODULES += (clip_vision,)
BUILTIN_MODULES += (unclip,)
BUILTIN_MODULES += (custom_sampling,)
BUILTIN_MODULES += (latent_ops,)
BUILTIN_MODULES += (images_extra,)
BUILTIN_MODULES += (inpaint,)
BUILTIN_MODULES += (strings,)
BUILTIN_MODULES += (rebatch,)
BUILTIN_MODULES += (animated,)
BUILTIN_MODULES += (latent_operations,)
BUILTIN_MODULES += (stitch,)
BUILTIN_MODULES += (upscale,)
BUILTIN_MODULES += (split_loaders,)
BUILTIN_MODULES += (merging, model_save)
BUILTIN_MODULES += (hypernetwork,)
BUILTIN_MODULES += (model_sampling, ip2p)
BUILTIN_MODULES += (core_extras,)
BUILTIN_MODULES += (guidance_patches,)
BUILTIN_MODULES += (speed_patches,)


def register_builtins(registry: NodeRegistry) -> NodeRegistry:
    for module in BUILTIN_MODULES:
        # "nodes" is what ComfyUI reports for its core nodes; clients treat such nodes as core.
        registry.register_module(module, python_module="nodes", source="builtin")
        for ndef in getattr(module, "NODE_DEFS", ()):  # nodes declared as NodeDefs (input names no
            registry.register(ndef)                    # parameter can have: merging's block merges)
    return registry


def create_registry() -> NodeRegistry:
    """A new registry holding the built-in nodes."""
    return register_builtins(NodeRegistry())


def create_services(env) -> dict:
    """The long-lived objects nodes share through ``ctx.services``: where models run
    (device, dtypes, low-memory mode, VRAM budget, from the Environment), the process's model
    cache and, with a VRAM budget, the guard that retries a node after an out-of-memory error."""
    from ..models.management import ModelCache, Placement

    placement = Placement.from_env(env)
    services = {"placement": placement, "models": ModelCache()}
    if placement.memory is not None:  # the executor retries a node that ran out of device memory
        services["node_guard"] = placement.memory.run_node
    return services
