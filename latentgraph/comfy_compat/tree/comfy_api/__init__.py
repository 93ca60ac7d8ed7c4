"""ComfyUI's ``comfy_api`` package: the V3 node API (``comfy_api.latest``, and
``comfy_api.v0_0_2`` that packs pin), over latentgraph (see latentgraph/plugins/comfy_v3.py)."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
