"""ComfyUI's ``comfy.model_base``: the classes of ``model.model`` (latentgraph's views of a
MODEL value, models/comfy_faces.py: an SDXL MODEL's is an ``SDXL``, SD1.x/2.x ones are
``BaseModel`` as in ComfyUI), ``ModelType`` and ``model_sampling(model_config, model_type)``.
The views are made by MODEL values; packs read them, they do not construct them."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime
from latentgraph.models.comfy_faces import (IP2P, SD21UNCLIP, SDXL, BaseModel, ModelType, SD15_instructpix2pix,
                                            SDXL_instructpix2pix, SDXLRefiner)

__all__ = ["IP2P", "SD21UNCLIP", "SDXL", "BaseModel", "ModelType", "SD15_instructpix2pix", "SDXL_instructpix2pix",
           "SDXLRefiner", "model_sampling"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class _OtherFamily(BaseModel):
    """A model family latentgraph does not load: packs test ``model.model`` against it (no
    value here is one) or subclass it; making one is the layer's missing-name error."""

    def __init__(self, *args, **kwargs):
        raise runtime.missing(__name__, type(self).__name__)


# ComfyUI's classes of the families latentgraph does not load, with its subclass relations
_FAMILIES = {"SVD_img2vid": (), "SV3D_u": ("SVD_img2vid",), "SV3D_p": ("SVD_img2vid",), "Stable_Zero123": (),
             "SD_X4Upscaler": (), "Lotus": (), "StableCascade_C": (), "StableCascade_B": (), "SD3": (),
             "AuraFlow": (), "StableAudio1": (), "HunyuanDiT": (), "PixArt": (), "Flux": (), "GenmoMochi": (),
             "LTXV": (), "HunyuanVideo": (), "CosmosVideo": (), "CosmosPredict2": (), "Lumina2": (), "WAN21": (),
             "WAN22": ("WAN21",), "HiDream": (), "Chroma": ("Flux",), "ACEStep": (), "Omnigen2": (), "QwenImage": (),
             "HunyuanImage21": ()}
for _name, _bases in _FAMILIES.items():
    globals()[_name] = type(_name, tuple(globals()[b] for b in _bases) or (_OtherFamily,), {"__module__": __name__})
__all__ += list(_FAMILIES)


def model_sampling(model_config, model_type: ModelType):
    """A new schedule object for ``model_type`` (ComfyUI's pairing of a sigma table and a
    prediction class), read from ``model_config.sampling_settings``."""
    import comfy.model_sampling as ms  # the tree's own module, as ComfyUI's does

    pairs = {ModelType.EPS: (ms.ModelSamplingDiscrete, ms.EPS),
             ModelType.V_PREDICTION: (ms.ModelSamplingDiscrete, ms.V_PREDICTION),
             ModelType.V_PREDICTION_EDM: (ms.ModelSamplingContinuousEDM, ms.V_PREDICTION),
             ModelType.EDM: (ms.ModelSamplingContinuousEDM, ms.EDM),
             ModelType.V_PREDICTION_CONTINUOUS: (ms.ModelSamplingContinuousV, ms.V_PREDICTION),
             ModelType.IMG_TO_IMG: (ms.ModelSamplingDiscrete, ms.IMG_TO_IMG)}
    if model_type not in pairs:
        raise ValueError(f"model_sampling: {model_type} is for a model family latentgraph does not load")
    table, prediction = pairs[model_type]
    return type("ModelSampling", (table, prediction), {})(model_config)
