"""ComfyUI's ``comfy_extras`` package. Its ``nodes_*`` modules are made on import (see
latentgraph.comfy_compat._ExtrasLoader): each holds, as V1 classes, the latentgraph nodes that
ComfyUI defines in that module (``comfy_extras.nodes_upscale_model.ImageUpscaleWithModel``), as
listed in latentgraph/data/comfy_core_nodes.json; a few are files here that add ComfyUI's plain
functions (``nodes_mask.composite``)."""

import importlib

from latentgraph.comfy_compat import _extras_modules, _in_tree, runtime


def __getattr__(name: str):
    # `from comfy_extras import nodes_mask` asks the package first: answer with the submodule
    if not name.startswith("_") and (f"{__name__}.{name}" in _extras_modules() or _in_tree(f"{__name__}.{name}")):
        return importlib.import_module(f"{__name__}.{name}")
    raise runtime.missing(__name__, name)
