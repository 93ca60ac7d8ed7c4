"""ComfyUI's ``comfy.text_encoders.flux``: Flux's text-encoder classes, import-only (see the
package docstring)."""

from latentgraph.comfy_compat import runtime

from comfy.sd1_clip import ComfyOnly  # the tree's own module

__all__ = ["FluxClipModel", "FluxTokenizer"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class FluxTokenizer(ComfyOnly):
    pass


class FluxClipModel(ComfyOnly):
    pass
