"""ComfyUI's ``comfy.text_encoders.sd3_clip``: SD3's text-encoder classes, import-only (see the
package docstring)."""

from latentgraph.comfy_compat import runtime

from comfy.sd1_clip import ComfyOnly, SDClipModel, SDTokenizer  # the tree's own module

__all__ = ["SD3ClipModel", "SD3Tokenizer", "T5XXLModel", "T5XXLTokenizer"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class T5XXLModel(SDClipModel):
    pass


class T5XXLTokenizer(SDTokenizer):
    pass


class SD3Tokenizer(ComfyOnly):
    pass


class SD3ClipModel(ComfyOnly):
    pass
