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

from ..graph.fileio import write_atomic

KINDS = ("input", "output", "temp")
CHANNELS = ("rgba", "rgb", "a")
PREVIEW_FORMATS = ("webp", "jpeg")
MAX_NAME_BYTES = 255  # one path component on common file systems
MAX_SUBFOLDER_BYTES = 1024  # well under PATH_MAX once the folder is prefixed
MAX_IMAGE_PIXELS = 8192 * 8192  # an image /view or a mask upload decodes
_DRIVE = re.compile(r"^[A-Za-z]:")
# served as bytes to download, never rendered by the browser from our origin
_UNSAFE_TYPES = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript", "text/css",
                 "image/svg+xml"}


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message)


def clean_name(name: str, what: str = "filename") -> str:
    """A file name or relative path as sent: no absolute paths, drive letters, '..' parts or
    NUL bytes (400 otherwise). Backslashes count as separators."""
    if not isinstance(name, str):
        raise _bad(f"{what} must be text")
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
        """``<folder>/<subfolder>/<basename of filename>``; 403 when the subfolder escapes, 400
        when the name is no file name (empty, '.' or '..' once normalised, or too long)."""
        if not isinstance(subfolder, str):
            raise _bad("subfolder must be text")
        base = self.folder(kind).resolve()
        name = PurePosixPath(clean_name(filename)).name
        if name in ("", ".", "..") or name.strip() == "":
            raise _bad(f"filename {filename!r} names no file")
        if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise _bad(f"filename is longer than {MAX_NAME_BYTES} bytes (MAX_NAME_BYTES)")
        if len(subfolder.encode("utf-8", "surrogatepass")) > MAX_SUBFOLDER_BYTES:
            raise _bad(f"subfolder is longer than {MAX_SUBFOLDER_BYTES} bytes (MAX_SUBFOLDER_BYTES)")
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

    def existing(self, kind: str, subfolder: str, filename: str) -> Path:
        """An existing file to read: 404 when absent, 403 when its real path (symlinks resolved)
        is outside the folder."""
        path = self.target(kind, subfolder, filename)
        if not path.is_file():
            raise web.HTTPNotFound(text=f"{filename} not found in {kind}")
        base = self.folder(kind).resolve()
        if base not in path.resolve().parents:
            raise web.HTTPForbidden(text=f"{filename} resolves outside the {kind} folder")
        return path

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
        preview, channel = _preview_options(q)  # checked before the file is touched
        path = self.existing(kind, q.get("subfolder", ""), filename)
        disposition = f'filename="{_header_safe(path.name)}"'
        if preview or channel in ("rgb", "a"):
            body, ctype = _render(path, preview, channel)
            return web.Response(body=body, content_type=ctype, headers={"Content-Disposition": disposition})
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
        overwrite = form.get("overwrite", "")
        if not all(isinstance(v, str) for v in (kind, subfolder, overwrite)):
            raise _bad("type, subfolder and overwrite must be text fields, not files")
        overwrite = overwrite.lower() in ("true", "1")
        path = self.target(kind, subfolder, filename)
        duplicate = False
        if not overwrite:
            stem, suffix, i = path.stem, path.suffix, 1
            digest = hashlib.sha256(data).digest()
            while path.exists() or path.is_symlink():
                if path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).digest() == digest:
                    duplicate = True
                    break
                path = path.with_name(f"{stem} ({i}){suffix}")
                i += 1
        if not duplicate:
            try:  # atomic: a kill never leaves half an upload; a symlink there is replaced, not followed
                write_atomic(path, data)
            except OSError as exc:
                raise _bad(f"cannot write {path.name} in {kind}: {exc.strerror or exc}") from None
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
        original_path = self.existing(ref.get("type") or "output", ref.get("subfolder") or "", ref["filename"])
        try:
            original = _open_image(original_path)
            mask = _open_image(io.BytesIO(image.file.read()))
        except ValueError as exc:
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


def _preview_options(q) -> tuple[tuple[str, int] | None, str]:
    """/view's ``preview=FORMAT;QUALITY`` (webp or jpeg, quality 1..100) and ``channel``
    (rgba, rgb or a), each refused with a 400 naming the accepted values."""
    channel = q.get("channel", "rgba") or "rgba"
    if channel not in CHANNELS:
        raise _bad(f"channel must be one of {', '.join(CHANNELS)}, not {channel[:40]!r}")
    raw = q.get("preview")
    if not raw:
        return None, channel
    fmt, _, quality = raw.partition(";")
    if fmt not in PREVIEW_FORMATS:
        raise _bad(f"preview format must be one of {', '.join(PREVIEW_FORMATS)}, not {fmt[:40]!r}")
    if not quality:
        return (fmt, 90), channel
    if not re.fullmatch(r"[0-9]{1,3}", quality) or not 1 <= int(quality) <= 100:
        raise _bad(f"preview quality must be an integer from 1 to 100, not {quality[:40]!r}")
    return (fmt, int(quality)), channel


def _open_image(source) -> Image.Image:
    """A fully decoded image, within MAX_IMAGE_PIXELS (checked from the header, before decoding)."""
    try:
        img = Image.open(source)
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{width}x{height} is more than {MAX_IMAGE_PIXELS:,} pixels (MAX_IMAGE_PIXELS)")
        img.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(str(exc)) from None
    return img


def _render(path: Path, preview: tuple[str, int] | None, channel: str) -> tuple[bytes, str]:
    """The bytes and type /view answers for a preview or a channel of an image file."""
    try:
        img = _open_image(path)
    except ValueError as exc:
        raise _bad(f"{path.name} is not an image that can be shown: {exc}") from None
    buf = io.BytesIO()
    if preview:
        fmt, quality = preview
        if "a" in channel:
            fmt = "webp"  # only webp keeps the alpha channel
        keep_alpha = fmt == "webp" and channel != "rgb" and ("A" in img.getbands() or "transparency" in img.info)
        img.convert("RGBA" if keep_alpha else "RGB").save(buf, format=fmt.upper(), quality=quality)
        return buf.getvalue(), f"image/{fmt}"
    if channel == "rgb":
        out = img.convert("RGB")
    else:
        alpha = img.convert("RGBA").getchannel("A")
        out = Image.new("RGBA", img.size, (0, 0, 0, 0))
        out.putalpha(alpha)
    out.save(buf, format="PNG")
    return buf.getvalue(), "image/png"


def _header_safe(name: str) -> str:
    return name.replace("\r", "_").replace("\n", "_").replace('"', "_")
