"""ComfyUI's ``comfy.supported_models``: its model-config classes, for ``isinstance`` tests on
``model.model.model_config`` (latentgraph's view is an instance of its family's class: SD15,
SD20, SDXL, SDXLRefiner, SD21UnclipL/H) and for packs that subclass them. Distilled SDXL
variants (SSD1B, KOALA, ...) are SDXL here, not their subclass. ``models`` lists them as
ComfyUI's does; latentgraph detects families itself and never reads it."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime

from comfy.supported_models_base import BASE  # the tree's own module

__all__ = ["FAMILY_CLASSES", "models"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


# ComfyUI's config classes, each with its parent (None: BASE), in the order of its models list
_CLASSES = {
    "Stable_Zero123": None, "SD15_instructpix2pix": "SD15", "SD15": None, "SD20": None, "SD21UnclipL": "SD20",
    "SD21UnclipH": "SD20", "SDXL_instructpix2pix": "SDXL", "SDXLRefiner": None, "SDXL": None, "SSD1B": "SDXL",
    "KOALA_700M": "SDXL", "KOALA_1B": "SDXL", "Segmind_Vega": "SDXL", "SD_X4Upscaler": "SD20",
    "Stable_Cascade_C": None, "Stable_Cascade_B": "Stable_Cascade_C", "SV3D_u": "SVD_img2vid",
    "SV3D_p": "SV3D_u", "SD3": None, "StableAudio": None, "AuraFlow": None, "PixArtAlpha": None,
    "PixArtSigma": "PixArtAlpha", "HunyuanDiT": None, "HunyuanDiT1": "HunyuanDiT", "FluxInpaint": "Flux",
    "Flux": None, "FluxSchnell": "Flux", "LotusD": "SD20", "SVD_img2vid": None}
_made: dict[str, type] = {}


def _make(name: str) -> type:
    if name not in _made:
        parent = _CLASSES[name]
        _made[name] = type(name, (_make(parent) if parent else BASE,), {"__module__": __name__})
    return _made[name]


for _name in _CLASSES:
    globals()[_name] = _make(_name)
__all__ += list(_CLASSES)

models = [_made[n] for n in _CLASSES]
# latentgraph's family -> the class its model_config is an instance of
FAMILY_CLASSES = {"sd15": _made["SD15"], "sd2": _made["SD20"], "sdxl": _made["SDXL"],
                  "sdxl_refiner": _made["SDXLRefiner"], "sd21_unclip_l": _made["SD21UnclipL"],
                  "sd21_unclip_h": _made["SD21UnclipH"]}
