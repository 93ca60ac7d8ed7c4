"""ComfyUI's ``comfy.ldm.modules.distributions`` package (see ``distributions``)."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
