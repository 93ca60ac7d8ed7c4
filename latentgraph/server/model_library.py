"""The model library of ComfyUI's frontend: the model folders, the files in each (with size
and times), a preview image per model, and a safetensors file's metadata.

Routes, as ComfyUI's app/model_manager.py and its /view_metadata answer them:

- ``GET /experiment/models``: ``[{"name", "folders"}]``, every model folder name with its
  absolute folders (those that do not exist yet included);
- ``GET /experiment/models/{folder}``: ``[{"name", "pathIndex", "modified", "created",
  "size"}]``, the model files under each of the folder name's folders (times in seconds);
- ``GET /experiment/models/preview/{folder}/{path_index}/{filename}``: a WebP made from the
  image beside the model (``name.png``, ``name.preview.jpg``, ...) or from the first cover image
  in its safetensors header (``ssmd_cover_images``);
- ``GET /view_metadata/{folder}?filename=``: the ``__metadata__`` of a safetensors header.

The folder names are ComfyUI's (legacy ``clip``/``unet`` read as text_encoders and
diffusion_models); their folders come from the Environment, so the user's, the
extra_model_paths.yaml ones and the package's own are all listed. Everything is read afresh on
each request; nothing is cached.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import os
import re
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from aiohttp import web

from ..graph.env import FOLDER_ALIASES, IMAGE_EXTENSIONS, MODEL_EXTENSIONS
from ..models.safetensors_header import read_metadata
from .files import _open_image

log = logging.getLogger("latentgraph.server")

# ComfyUI's model folder names (its folder table less "configs" and "custom_nodes"), in its
# order, with the Environment kinds each covers when that is not the name alone
FOLDER_NAMES = ("checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision", "style_models",
                "embeddings", "diffusers", "vae_approx", "controlnet", "gligen", "upscale_models", "hypernetworks",
                "photomaker", "classifiers", "model_patches", "audio_encoders")
FOLDER_KINDS = {"controlnet": ("controlnet", "t2i_adapter")}
SAFETENSORS = (".safetensors", ".sft")
MAX_PREVIEW_FILE_BYTES = 64 * 2**20  # an image file beside a model, checked with stat before reading
MAX_LISTED_FILES = 100_000  # files one listing returns (a folder name's folders together)
MAX_NAME_BYTES = 4096  # a model's relative path as a request names it


def folder_table(env) -> dict[str, list[str]]:
    """Folder name -> its absolute folders, in order (a file's ``pathIndex`` indexes this list).
    Kinds of extra_model_paths.yaml that ComfyUI has no name for get their own name, as
    ComfyUI adds them to its table."""
    table = {}
    for name in FOLDER_NAMES:
        folders = [os.path.abspath(f) for kind in FOLDER_KINDS.get(name, (name,)) for f in env.folders(kind)]
        table[name] = list(dict.fromkeys(folders))
    covered = {kind for kinds in FOLDER_KINDS.values() for kind in kinds}
    for kind, extra in env.model_dirs.items():
        if kind not in table and kind not in covered:
            table[kind] = list(dict.fromkeys(os.path.abspath(f) for f in extra))
    return table


def folders_of(env, name: str) -> list[str] | None:
    """The folders of folder name ``name`` (a legacy name read as its new one); None if unknown."""
    return folder_table(env).get(FOLDER_ALIASES.get(name, name))


def relative_name(name: str) -> PurePosixPath | None:
    """A model's path relative to its folder as a request sends it, or None when it is no such
    path (empty, absolute, with a drive, '..' or a NUL byte, or too long)."""
    if not name or "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return None
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or (posix.parts and posix.parts[0].endswith(":")):
        return None
    return posix if posix.parts else None


# -- listing ------------------------------------------------------------------------------------
def _model_files(folder: Path) -> Iterator[Path]:
    """Model files under ``folder`` (links followed, each real folder once), hidden files and
    folders (.git among them) skipped."""
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:  # a link back to a folder already walked
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(MODEL_EXTENSIONS):
                yield Path(root) / name


def list_models(folders: list[str], limit: int = MAX_LISTED_FILES) -> list[dict]:
    """ComfyUI's entries for the model files under ``folders``: name (relative, with '/'),
    pathIndex (the folder's index), modified and created (seconds), size (bytes)."""
    out: list[dict] = []
    for index, folder in enumerate(folders):
        base = Path(folder)
        if not base.is_dir():
            continue
        for path in _model_files(base):
            if len(out) >= limit:
                log.warning("the model library lists only the first %d files (MAX_LISTED_FILES)", limit)
                return out
            try:
                st = path.stat()
            except OSError:  # a broken link
                continue
            out.append({"name": path.relative_to(base).as_posix(), "pathIndex": index,
                        "modified": st.st_mtime, "created": st.st_ctime, "size": st.st_size})
    return out


def cover_image(path: Path) -> bytes | None:
    """The first image of ``ssmd_cover_images`` (a JSON list of base64 images, as a string)
    in a safetensors file's metadata, undecoded; None when there is none."""
    meta = read_metadata(path) if path.is_file() else None
    covers = meta.get("ssmd_cover_images") if meta else None
    if not isinstance(covers, str):
        return None
    try:
        covers = json.loads(covers)
    except (ValueError, RecursionError):
        return None
    if not isinstance(covers, list) or not covers or not isinstance(covers[0], str):
        return None
    try:
        return base64.b64decode(covers[0])
    except (binascii.Error, ValueError):
        return None


# -- previews -----------------------------------------------------------------------------------
def sibling_images(stem: Path) -> list[Path]:
    """Images beside a model named ``<stem>.<image ext>`` or ``<stem>.preview.<image ext>``,
    those first, each in IMAGE_EXTENSIONS order."""
    try:
        names = os.listdir(stem.parent)
    except OSError:
        return []
    order = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found = []
    for name in names:
        base, ext = os.path.splitext(name)
        rank = order.get(ext.lower())
        if rank is None or base not in (stem.name, stem.name + ".preview"):
            continue
        found.append((base != stem.name, rank, name))
    return [stem.parent / name for *_, name in sorted(found)]


def to_webp(source: Path | bytes) -> bytes | None:
    """``source`` (an image file, or an image's bytes) as WebP; None when it is no image that
    fits the budgets."""
    if isinstance(source, Path):
        try:
            if source.stat().st_size > MAX_PREVIEW_FILE_BYTES:
                log.info("%s is over %d bytes (MAX_PREVIEW_FILE_BYTES): no preview", source, MAX_PREVIEW_FILE_BYTES)
                return None
        except OSError:
            return None
    try:
        img = _open_image(source if isinstance(source, Path) else io.BytesIO(source))
    except ValueError as exc:
        log.info("no model preview from %s: %s", source if isinstance(source, Path) else "a cover image", exc)
        return None
    keep_alpha = "A" in img.getbands() or "transparency" in img.info
    buf = io.BytesIO()
    try:
        img.convert("RGBA" if keep_alpha else "RGB").save(buf, format="WEBP")
    except (OSError, ValueError) as exc:  # e.g. a side over WebP's 16383 pixels
        log.info("no model preview: cannot write it as WebP: %s", exc)
        return None
    return buf.getvalue()


def model_preview(folder: Path, name: PurePosixPath) -> bytes | None:
    """The preview of the model ``folder/name`` as WebP (``name``'s own extension is ignored:
    the frontend asks for ``model.webp``): an image beside it, else its first cover image."""
    stem = folder / name.parent / os.path.splitext(name.name)[0]
    if not stem.parent.is_dir():
        return None
    for image in sibling_images(stem):
        webp = to_webp(image)
        if webp is not None:
            return webp
    for ext in SAFETENSORS:
        cover = cover_image(stem.with_name(stem.name + ext))
        if cover is not None:
            return to_webp(cover)
    return None


# -- routes -------------------------------------------------------------------------------------
def _not_found() -> web.Response:
    """ComfyUI's bare 404: the frontend reads an empty body as "nothing" (a text body would be
    logged as unreadable JSON for every model without metadata)."""
    return web.Response(status=404)


class ModelLibrary:
    """The model library routes over the Environment that ``env()`` returns."""

    def __init__(self, env: Callable):
        self.env = env

    def routes(self) -> list:
        return [("GET", "/experiment/models", self.get_folders),
                ("GET", "/experiment/models/{folder}", self.get_models),
                ("GET", "/experiment/models/preview/{folder}/{path_index}/{filename:.*}", self.get_preview),
                ("GET", "/view_metadata/{folder}", self.get_metadata)]

    async def get_folders(self, request: web.Request) -> web.Response:
        table = folder_table(self.env())
        return web.json_response([{"name": name, "folders": folders} for name, folders in table.items()])

    async def get_models(self, request: web.Request) -> web.Response:
        folders = folders_of(self.env(), request.match_info["folder"])
        if folders is None:
            return web.Response(status=404, text=f"unknown model folder {request.match_info['folder'][:100]!r}")
        return web.json_response(await asyncio.to_thread(list_models, folders))

    async def get_preview(self, request: web.Request) -> web.Response:
        folders = folders_of(self.env(), request.match_info["folder"])
        index = request.match_info["path_index"]
        name = relative_name(request.match_info["filename"])
        if folders is None or name is None or not re.fullmatch(r"[0-9]{1,6}", index) or int(index) >= len(folders):
            return _not_found()
        webp = await asyncio.to_thread(model_preview, Path(folders[int(index)]), name)
        if webp is None:
            return _not_found()
        return web.Response(body=webp, content_type="image/webp")

    async def get_metadata(self, request: web.Request) -> web.Response:
        folders = folders_of(self.env(), request.match_info["folder"])
        filename = request.query.get("filename", "")
        name = relative_name(filename)
        if folders is None or name is None or not filename.endswith(SAFETENSORS):
            return _not_found()
        path = next((Path(f) / name for f in folders if (Path(f) / name).is_file()), None)
        meta = await asyncio.to_thread(read_metadata, path) if path is not None else None
        return web.json_response(meta) if meta is not None else _not_found()
