"""ComfyUI's ``comfy_extras.chainner_models`` (deprecated there in favour of spandrel, which
latentgraph's upscale models already are); only ``model_loading`` is provided."""

from latentgraph.comfy_compat import runtime

from . import model_loading  # packs write `from comfy_extras.chainner_models import model_loading`

__all__ = ["model_loading"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
