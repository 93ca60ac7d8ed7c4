"""ComfyUI's ``comfy.comfy_types.node_typing``: the socket type names as a string enum (``IO``),
with ComfyUI's matching rule for ``!=`` (``*`` matches everything; comma-separated unions
match when one side's types contain the other's), and base classes V1 nodes may derive from.
Only typing: latentgraph reads the classes like any V1 class."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class StrEnum(str, Enum):
    def __str__(self) -> str:
        return self.value


class IO(StrEnum):
    """Socket type names; compare with ``!=`` as ComfyUI's link check does."""

    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __ne__(self, other: object) -> bool:
        if self.value == "*" or other == "*":
            return False
        if not isinstance(other, str):
            return True
        mine, theirs = frozenset(self.value.split(",")), frozenset(str(other).split(","))
        return not (mine <= theirs or theirs <= mine)

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other)

    __hash__ = str.__hash__


class InputTypeDict(TypedDict, total=False):
    required: dict[str, tuple]
    optional: dict[str, tuple]
    hidden: dict[str, Any]


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: str


class ComfyNodeABC:
    """A base for V1 node classes: the class attributes ComfyUI reads, with its defaults."""

    DESCRIPTION = ""
    CATEGORY = ""
    EXPERIMENTAL = False
    DEPRECATED = False
    OUTPUT_NODE = False
    INPUT_IS_LIST = False
    RETURN_TYPES: tuple = ()
    RETURN_NAMES: tuple | None = None
    OUTPUT_IS_LIST: tuple | None = None
    OUTPUT_TOOLTIPS: tuple | None = None
    FUNCTION = ""


class CheckLazyMixin:
    """``check_lazy_status`` asking for every input given as None (not computed yet), as
    ComfyUI's mixin does; with ``INPUT_IS_LIST`` an input not computed yet is ``(None,)``."""

    def check_lazy_status(self, **kwargs) -> list[str]:
        return [name for name, value in kwargs.items()
                if value is None or (isinstance(value, (list, tuple)) and len(value) == 1 and value[0] is None)]
