"""ComfyUI's V3 UI results (``comfy_api.latest.ui``): what a node shows in the frontend,
``NodeOutput(ui=ui.PreviewImage(images, cls=cls))``. Images are written as PNGs (with the
prompt and extra_pnginfo in their text chunks, as latentgraph's own SaveImage writes them) into
the folders of the running node's Environment; ``as_dict()`` is the node's UI output. Audio,
animated PNG/WebP and video writing are not provided (their names raise the layer's
missing-name error)."""

from __future__ import annotations

import io as _bytes_io
import secrets
from pathlib import Path

import folder_paths  # the tree's module, as ComfyUI's ui imports it

from latentgraph.comfy_compat import runtime
from latentgraph.graph.fileio import write_atomic
from latentgraph.nodes.imageio import png_metadata, tensor_to_pil

from ._io import FolderType, _UIOutput


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class SavedResult(dict):
    """One written file as the frontend names it: ``{"filename", "subfolder", "type"}``."""

    def __init__(self, filename: str, subfolder: str, type: FolderType):  # noqa: A002 - ComfyUI's name
        super().__init__(filename=filename, subfolder=subfolder, type=FolderType(type).value)

    @property
    def filename(self) -> str:
        return self["filename"]

    @property
    def subfolder(self) -> str:
        return self["subfolder"]

    @property
    def type(self) -> FolderType:
        return FolderType(self["type"])


class SavedImages(_UIOutput):
    def __init__(self, results: list, is_animated: bool = False):
        self.results, self.is_animated = results, is_animated

    def as_dict(self) -> dict:
        data = {"images": self.results}
        if self.is_animated:
            data["animated"] = (True,)
        return data


def _folder(folder_type: FolderType) -> str:
    kind = FolderType(folder_type)
    if kind == FolderType.input:
        return folder_paths.get_input_directory()
    return folder_paths.get_output_directory() if kind == FolderType.output else folder_paths.get_temp_directory()


class ImageSaveHelper:
    """Writing a batch of images the way ComfyUI's V3 nodes do."""

    @staticmethod
    def _create_png_metadata(cls):
        hidden = getattr(cls, "hidden", None) if cls is not None else None
        if not hidden:
            return None
        return png_metadata(hidden.prompt or None, hidden.extra_pnginfo or None)

    @staticmethod
    def save_images(images, filename_prefix: str, folder_type: FolderType, cls, compress_level=4) -> list:
        """Each image of the batch as ``<prefix>_<counter:05>_.png``; their SavedResults."""
        folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, _folder(folder_type), images[0].shape[1], images[0].shape[0])
        metadata = ImageSaveHelper._create_png_metadata(cls)
        results = []
        for index, image in enumerate(images):
            name = f"{stem.replace('%batch_num%', str(index))}_{counter:05}_.png"
            buffer = _bytes_io.BytesIO()
            tensor_to_pil(image).save(buffer, format="PNG", pnginfo=metadata, compress_level=compress_level)
            write_atomic(Path(folder) / name, buffer.getvalue())
            results.append(SavedResult(name, subfolder, folder_type))
            counter += 1
        return results

    @staticmethod
    def get_save_images_ui(images, filename_prefix: str, cls, compress_level=4) -> SavedImages:
        return SavedImages(ImageSaveHelper.save_images(images, filename_prefix, FolderType.output, cls,
                                                       compress_level))


def _temp_prefix() -> str:
    return "ComfyUI_temp_" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))


class PreviewImage(_UIOutput):
    """Images written to the temp folder for the frontend to show."""

    def __init__(self, image, animated: bool = False, cls=None, **kwargs):
        self.values = ImageSaveHelper.save_images(image, _temp_prefix(), FolderType.temp, cls, compress_level=1)
        self.animated = animated

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (self.animated,)}


class PreviewMask(PreviewImage):
    """A mask batch ``[B,H,W]`` previewed as grey images."""

    def __init__(self, mask, animated: bool = False, cls=None, **kwargs):
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3)
        super().__init__(grey, animated, cls, **kwargs)


class PreviewVideo(_UIOutput):
    def __init__(self, values: list, **kwargs):
        self.values = values

    def as_dict(self) -> dict:
        return {"images": self.values, "animated": (True,)}


class PreviewUI3D(_UIOutput):
    def __init__(self, model_file, camera_info, **kwargs):
        self.model_file, self.camera_info = model_file, camera_info

    def as_dict(self) -> dict:
        return {"result": [self.model_file, self.camera_info]}


class PreviewText(_UIOutput):
    def __init__(self, value: str, **kwargs):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": (self.value,)}


__all__ = ["SavedResult", "SavedImages", "ImageSaveHelper", "PreviewImage", "PreviewMask", "PreviewVideo",
           "PreviewUI3D", "PreviewText"]
