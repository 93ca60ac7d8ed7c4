"""GET /view and POST /upload/image, /upload/mask: files in the input, output and temp
folders, with the path checks ComfyUI makes (and a few it does not)."""

from __future__ import annotations

import hashlib
import io
import json
import mimetypes
import re
from pathlib import Path, PurePosixPath
from typing import Callable

from aiohttp import web
from PIL import Image, PngImagePlugin, UnidentifiedImageError

KINDS = ("input", "output", "temp")
_DRIVE = re.compile(r"^[A-Za-z]:")
# served as bytes to download, never rendered by the browser from our origin
_UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css",
                 "image/svg+xml"}


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def clean_name(name: str, what: str = "filename") -> str:
    """A file name or relative path as sent: no absolute paths, drive letters, '..' parts or
    NUL bytes (400 otherwise). Backslashes count as separators."""
    if not name:
        raise _bad(f"{what} is empty")
    if "\x00" in name:
        raise _bad(f"{what} contains a NUL byte")
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise _bad(f"{what} must be relative: {name!r}")
    if ".." in PurePosixPath(posix).parts:
        raise _bad(f"{what} must not contain '..': {name!r}")
    return posix


class FileRoutes:
    """The file routes over the folders of the Environment that ``env()`` returns."""

    def __init__(self, env: Callable):
        self.env = env

    def routes(self) -> list:
        return [("GET", "/view", self.view), ("POST", "/upload/image", self.upload_image),
                ("POST", "/upload/mask", self.upload_mask)]

    def folder(self, kind: str) -> Path:
        env = self.env()
        if kind not in KINDS:
            raise _bad(f"type must be one of {', '.join(KINDS)}, not {kind!r}")
        return Path(env.folder_of(kind))

    def target(self, kind: str, subfolder: str, filename: str) -> Path:
        """``<folder>/<subfolder>/<basename of filename>``; 403 when the subfolder escapes."""
        base = self.folder(kind).resolve()
        name = PurePosixPath(clean_name(filename)).name
        if subfolder:
            sub = subfolder.replace("\\", "/")
            if "\x00" in sub or sub.startswith("/") or _DRIVE.match(sub):
                raise web.HTTPForbidden(text=f"subfolder {subfolder!r} leaves the {kind} folder")
            directory = (base / sub).resolve()
        else:
            directory = base
        if directory != base and base not in directory.parents:
            raise web.HTTPForbidden(text=f"subfolder {subfolder!r} leaves the {kind} folder")
        return directory / name

    # -- GET /view --------------------------------------------------------------------------
    async def view(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        if "filename" not in q:
            raise web.HTTPNotFound(text="filename is missing")
        filename, kind = q["filename"], q.get("type") or "output"
        for k in KINDS:  # ComfyUI's annotated names: "a.png [input]"
            if filename.endswith(f" [{k}]"):
                filename, kind = filename[: -len(k) - 3], k
                break
        path = self.target(kind, q.get("subfolder", ""), filename)
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{filename} not found in {kind}")
        disposition = f'filename="{_header_safe(path.name)}"'
        preview, channel = q.get("preview"), q.get("channel", "rgba")
        if preview or channel in ("rgb", "a"):
            try:
                img = Image.open(path)
                img.load()
            except (UnidentifiedImageError, OSError):
                raise _bad(f"{path.name} is not an image") from None
            if preview:
                parts = preview.split(";")
                fmt = parts[0] if parts[0] in ("webp", "jpeg") else "webp"
                if "a" in channel:
                    fmt = "webp"
                quality = int(parts[-1]) if parts[-1].isdigit() else 90
                if fmt == "jpeg" or channel == "rgb":
                    img = img.convert("RGB")
                buf = io.BytesIO()
                img.save(buf, format=fmt.upper(), quality=quality)
                return web.Response(body=buf.getvalue(), content_type=f"image/{fmt}",
                                    headers={"Content-Disposition": disposition})
            if channel == "rgb":
                out = img.convert("RGB")
            else:
                alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size, (0, 0, 0, 0))
                out.putalpha(alpha)
            buf = io.BytesIO()
            out.save(buf, format="PNG")
            return web.Response(body=buf.getvalue(), content_type="image/png",
                                headers={"Content-Disposition": disposition})
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if ctype in _UNSAFE_TYPES:
            ctype = "application/octet-stream"
        return web.FileResponse(path, headers={"Content-Type": ctype, "Content-Disposition": disposition})

    # -- uploads ----------------------------------------------------------------------------
    async def _form(self, request: web.Request):
        if not request.content_type.startswith("multipart/"):
            raise _bad("expected multipart/form-data with an 'image' file")
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise
        except ValueError as exc:
            raise _bad(f"malformed multipart body: {exc}") from None
        image = form.get("image")
        if image is None or not hasattr(image, "file") or not getattr(image, "filename", None):
            raise _bad("the 'image' field must be a file with a name")
        return form, image

    def _store(self, form, filename: str, data: bytes) -> web.Response:
        """Write an upload (ComfyUI's naming: ``name (1).ext`` when the name is taken by other
        content; nothing written, the existing name answered, when the same bytes are there)."""
        kind = form.get("type") or "input"
        subfolder = form.get("subfolder") or ""
        overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
        path = self.target(kind, subfolder, filename)
        duplicate = False
        if not overwrite:
            stem, suffix, i = path.stem, path.suffix, 1
            digest = hashlib.sha256(data).digest()
            while path.exists():
                if path.is_file() and hashlib.sha256(path.read_bytes()).digest() == digest:
                    duplicate = True
                    break
                path = path.with_name(f"{stem} ({i}){suffix}")
                i += 1
        if not duplicate:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return web.json_response({"name": path.name, "subfolder": subfolder, "type": kind})

    async def upload_image(self, request: web.Request) -> web.Response:
        form, image = await self._form(request)
        return self._store(form, image.filename, image.file.read())

    async def upload_mask(self, request: web.Request) -> web.Response:
        form, image = await self._form(request)
        try:
            ref = json.loads(form.get("original_ref") or "")
            if not isinstance(ref, dict) or not ref.get("filename"):
                raise ValueError("needs a filename")
        except ValueError as exc:
            raise _bad(f"original_ref must be JSON naming the original image: {exc}") from None
        original_path = self.target(ref.get("type") or "output", ref.get("subfolder") or "", ref["filename"])
        if not original_path.is_file():
            raise web.HTTPNotFound(text=f"original image {ref['filename']} not found")
        try:
            original = Image.open(original_path)
            original.load()
            mask = Image.open(io.BytesIO(image.file.read()))
            mask.load()
        except (UnidentifiedImageError, OSError) as exc:
            raise _bad(f"cannot read the image: {exc}") from None
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(original, "text", {}).items():
            info.add_text(key, value)
        result = original.convert("RGBA")
        alpha = mask.getchannel("A") if "A" in mask.getbands() else mask.convert("L")
        result.putalpha(alpha.resize(result.size))
        buf = io.BytesIO()
        result.save(buf, format="PNG", pnginfo=info)
        return self._store(form, image.filename, buf.getvalue())


def _header_safe(name: str) -> str:
    return name.replace("\r", "_").replace("\n", "_").replace('"', "_")
