"""ComfyUI's ``comfy_extras`` package. Its ``nodes_*`` modules are made on import (see
latentgraph.comfy_compat._ExtrasLoader): each holds, as V1 classes, the latentgraph nodes that
ComfyUI defines in that module (``comfy_extras.nodes_upscale_model.ImageUpscaleWithModel``), as
listed in latentgraph/data/comfy_core_nodes.json."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
