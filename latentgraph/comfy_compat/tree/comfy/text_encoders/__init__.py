"""ComfyUI's ``comfy.text_encoders`` package: the text encoders of families latentgraph does not
load (SD3, Flux). Only the classes packs import for isinstance tests are here, as in
comfy.sdxl_clip: no value is an instance of one and making one is a missing-name error."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
