"""ComfyUI's ``comfy.supported_models_base``: ``BASE``, the class of ``model.model.model_config``
(latentgraph's ModelConfig view is one, and an instance of the ``comfy.supported_models``
class of its family), and ``ClipTarget``. Making a config to build a model from is ComfyUI's
model construction, which latentgraph does not provide: ``BASE(...)`` is a missing-name error."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime
from latentgraph.models.comfy_faces import ModelConfig

__all__ = ["BASE", "ClipTarget"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class _ByFamily(type):
    """isinstance holds for our ModelConfig when its family's class is this class or below it."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        if not isinstance(obj, ModelConfig):
            return False
        if cls is BASE:
            return True
        import comfy.supported_models  # the tree's own module, which names the families' classes

        ours = comfy.supported_models.FAMILY_CLASSES.get(obj.family)
        return ours is not None and issubclass(ours, cls)


class BASE(metaclass=_ByFamily):
    unet_config: dict = {}
    unet_extra_config: dict = {"num_heads": -1, "num_head_channels": 64}
    required_keys: dict = {}
    clip_prefix: list = []
    clip_vision_prefix = None
    noise_aug_config = None
    sampling_settings: dict = {}
    latent_format = None
    vae_key_prefix = ["first_stage_model."]
    text_encoder_key_prefix = ["cond_stage_model."]
    supported_inference_dtypes: list = []
    memory_usage_factor = 2.0
    manual_cast_dtype = None
    custom_operations = None
    scaled_fp8 = None
    optimizations: dict = {"fp8": False}

    def __init__(self, unet_config=None):
        raise runtime.missing(__name__, f"{type(self).__name__}.__init__")


class ClipTarget:
    """A tokenizer class and a text-encoder class, with their parameters."""

    def __init__(self, tokenizer, clip):
        self.clip = clip
        self.tokenizer = tokenizer
        self.params = {}
