"""ComfyUI's ``comfy_api.v0_0_2``: the version packs pin, the same ``io``, ``ui`` and
``ComfyExtension`` as ``comfy_api.latest``."""

from latentgraph.comfy_compat import runtime

from ..latest import ComfyExtension, io, ui

__all__ = ["ComfyExtension", "io", "ui"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
