"""ComfyUI's ``comfy.comfy_types``: the typing helpers packs annotate V1 nodes with."""

from .node_typing import IO, CheckLazyMixin, ComfyNodeABC, FileLocator, InputTypeDict

__all__ = ["IO", "CheckLazyMixin", "ComfyNodeABC", "FileLocator", "InputTypeDict"]
