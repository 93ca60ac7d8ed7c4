"""ComfyUI's video value types (``comfy_api.latest.Types`` and ``InputImpl``). The enums and
the components hold data as ComfyUI's do; reading or writing a video file needs a video codec
library latentgraph does not use, so those methods name themselves as missing."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from fractions import Fraction
from typing import Any

from latentgraph.comfy_compat import runtime


class VideoCodec(str, Enum):
    AUTO = "auto"
    H264 = "h264"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]


class VideoContainer(str, Enum):
    AUTO = "auto"
    MP4 = "mp4"

    @classmethod
    def as_input(cls) -> list[str]:
        return [member.value for member in cls]

    @classmethod
    def get_extension(cls, value) -> str:
        value = cls(value) if isinstance(value, str) else value
        return "mp4" if value in (cls.MP4, cls.AUTO) else ""


@dataclass
class VideoComponents:
    images: Any  # IMAGE (frames, H, W, C)
    frame_rate: Fraction
    audio: Any = None
    metadata: dict | None = None


class VideoFromComponents:
    """A video held as its frames (and audio): what a node builds before saving it."""

    def __init__(self, components: VideoComponents):
        self.__components = components

    def get_components(self) -> VideoComponents:
        return self.__components

    def get_dimensions(self) -> tuple[int, int]:
        images = self.__components.images
        return int(images.shape[2]), int(images.shape[1])

    def save_to(self, *args, **kwargs):
        raise runtime.missing("comfy_api.latest.InputImpl", "VideoFromComponents.save_to")


class VideoFromFile:
    """A video file, read only when asked: decoding needs a codec library, so it is missing."""

    def __init__(self, file):
        self.__file = file

    def get_stream_source(self):
        return self.__file

    def get_components(self):
        raise runtime.missing("comfy_api.latest.InputImpl", "VideoFromFile.get_components")

    def save_to(self, *args, **kwargs):
        raise runtime.missing("comfy_api.latest.InputImpl", "VideoFromFile.save_to")


class Types:
    VideoCodec = VideoCodec
    VideoContainer = VideoContainer
    VideoComponents = VideoComponents


class InputImpl:
    VideoFromFile = VideoFromFile
    VideoFromComponents = VideoFromComponents
