"""ComfyUI's ``comfy.ldm`` package: only ``modules.attention``'s attention functions are
provided; the network classes under it are ComfyUI's own and have no counterpart here."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
