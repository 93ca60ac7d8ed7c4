"""ComfyUI's ``comfy_api.latest``: ``io`` (node declarations), ``ui`` (what nodes show) and
``ComfyExtension`` (what a pack's ``comfy_entrypoint()`` returns)."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime

from . import _io as io
from . import _ui as ui
from ._video import InputImpl, Types

comfy_io = io  # ComfyUI's second name for io


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class ComfyExtension:
    """A pack's extension: latentgraph awaits ``on_load()`` once, then registers the node classes
    ``get_node_list()`` returns."""

    async def on_load(self) -> None:
        """Set up what the pack needs before its nodes are listed (nothing by default)."""

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        raise NotImplementedError(f"{type(self).__name__} must define async get_node_list()")


__all__ = ["ComfyExtension", "InputImpl", "Types", "io", "comfy_io", "ui"]
