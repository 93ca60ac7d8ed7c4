"""Web extensions: the JavaScript (and css, images, json) that packs ship for ComfyUI's frontend.

``GET /extensions`` lists the frontend's own extension scripts, then, for each loaded pack with
a web folder (``PluginInfo.web_dir``, in load order), ``/extensions/<pack>/<path>`` for every
``.js`` file under it (sorted; names starting with ``.`` skipped, as ComfyUI's glob does). The
frontend imports each one. ``GET /extensions/<pack>/<path>`` serves any file of that folder.
Both are also under ``/api``.

As in ComfyUI, a pack's folder wins over the frontend's own ``extensions/<same name>/`` folder;
unlike ComfyUI, the frontend's scripts it hides are left out of the listing (they could not be
fetched). Paths are checked segment by segment on the still-encoded URL, so ``..`` in any
spelling, absolute paths and symlinks that leave the folder are refused before a file is opened.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
from pathlib import Path
from urllib.parse import quote, unquote

from aiohttp import web

log = logging.getLogger("latentgraph.server")

MAX_WALKED_ENTRIES = 20_000  # directory entries looked at per pack for one listing
MAX_LISTED_FILES = 2_000  # .js files listed per pack
MAX_URL_PATH_BYTES = 2048  # of the decoded path after /extensions/
# The types a browser insists on (a module script must come as JavaScript); others by extension.
CONTENT_TYPES = {".js": "application/javascript", ".mjs": "application/javascript", ".css": "text/css",
                 ".json": "application/json", ".html": "text/html", ".svg": "image/svg+xml", ".png": "image/png",
                 ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif",
                 ".woff2": "font/woff2", ".wasm": "application/wasm", ".map": "application/json"}
TEXT_TYPES = ("application/javascript", "text/css", "application/json", "text/html", "image/svg+xml")


def content_type(path: Path) -> str:
    kind = CONTENT_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"{kind}; charset=utf-8" if kind in TEXT_TYPES else kind


def js_files(root: Path) -> tuple[list[str], bool]:
    """The relative posix paths of the ``.js`` files under ``root``, sorted, and whether a budget
    (MAX_WALKED_ENTRIES, MAX_LISTED_FILES) stopped the walk. Symlinked folders are not entered
    (no loops); a symlinked file counts only if it stays inside ``root``."""
    found: list[str] = []
    walked = 0
    pending = [""]
    while pending:
        rel = pending.pop()
        try:
            with os.scandir(root / rel) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # unreadable: nothing to list there
        for entry in entries:
            walked += 1
            if walked > MAX_WALKED_ENTRIES or len(found) >= MAX_LISTED_FILES:
                return sorted(found), True
            if entry.name.startswith("."):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                pending.append(path)
            elif entry.name.endswith(".js") and entry.is_file() and (not entry.is_symlink()
                                                                       or stays_inside(root, root / path)):
                found.append(path)
    return sorted(found), False


def stays_inside(root: Path, path: Path) -> bool:
    """Whether ``path``, links followed, is under ``root``; False when either cannot be resolved."""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


class ExtensionRoutes:
    """The two routes, over the loaded packs' web folders and the frontend's own folder."""

    def __init__(self, plugins, frontend_scripts, web_root: Path | None):
        self.packs: dict[str, Path] = {p.name: Path(p.web_dir) for p in plugins
                                       if p.status == "loaded" and p.web_dir}
        self.frontend_scripts = frontend_scripts  # () -> the frontend's own /extensions/... URLs
        self.web_root = web_root
        self._warned: set[str] = set()

    def routes(self) -> list:
        return [("GET", "/extensions", self.get_list), ("GET", "/extensions/{pack}/{path:.+}", self.get_file),
                ("HEAD", "/extensions/{pack}/{path:.+}", self.get_file)]  # as a static route answers HEAD

    def scripts(self) -> list[str]:
        own = [url for url in self.frontend_scripts() if self._frontend_pack(url) not in self.packs]
        for name, root in self.packs.items():
            files, cut = js_files(root)
            if cut and name not in self._warned:
                self._warned.add(name)
                log.warning("pack %s: its web folder %s is too big to list whole (MAX_WALKED_ENTRIES=%d, "
                            "MAX_LISTED_FILES=%d); /extensions lists %d of its scripts", name, root,
                            MAX_WALKED_ENTRIES, MAX_LISTED_FILES, len(files))
            own.extend(f"/extensions/{quote(name)}/{quote(rel)}" for rel in files)
        return own

    @staticmethod
    def _frontend_pack(url: str) -> str | None:
        parts = url.split("/")  # "", "extensions", name, ...
        return unquote(parts[2]) if len(parts) > 3 else None

    async def get_list(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.scripts))

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        pack, rel = _split(request)
        root = self.packs.get(pack)
        if root is None:
            root = self._frontend_folder(pack)
        if root is None:
            raise web.HTTPNotFound(text=f"no web extension named {pack!r}: no loaded pack serves one"
                                        f" (served: {', '.join(sorted(self.packs)) or 'none'})")
        path = root.joinpath(*rel)
        if not stays_inside(root, path):
            raise web.HTTPForbidden(text=f"forbidden: {'/'.join(rel)!r} leaves the web folder of {pack!r}")
        if not path.is_file():
            raise web.HTTPNotFound(text=f"no file {'/'.join(rel)!r} in the web folder of {pack!r}")
        return web.FileResponse(path, headers={"Content-Type": content_type(path)})

    def _frontend_folder(self, name: str) -> Path | None:
        """The frontend's own extensions/<name> folder (its core scripts), if there is one."""
        if self.web_root is None:
            return None
        folder = self.web_root / "extensions" / name
        return folder if folder.is_dir() else None


def _split(request: web.Request) -> tuple[str, list[str]]:
    """The pack name and the path's segments, each decoded alone from the still-encoded URL path,
    so that an encoded ``/`` or ``..`` cannot change which folder a segment names."""
    raw = request.rel_url.raw_path
    marker = "/extensions/"
    if marker not in raw:  # only a URL the router normalised could get here without it
        raise web.HTTPNotFound(text="not a web extension path")
    tail = raw[raw.index(marker) + len(marker):]
    try:
        segments = [unquote(s, errors="strict") for s in tail.split("/")]
    except UnicodeDecodeError:
        raise web.HTTPBadRequest(text="the path is not valid UTF-8 once decoded") from None
    if sum(len(s.encode("utf-8", "surrogatepass")) + 1 for s in segments) > MAX_URL_PATH_BYTES:
        raise web.HTTPBadRequest(text=f"the path is longer than {MAX_URL_PATH_BYTES} bytes (MAX_URL_PATH_BYTES)")
    pack, rel = segments[0], segments[1:]
    if _bad_segment(pack):
        raise web.HTTPForbidden(text=f"forbidden: {'/'.join(segments)!r} does not start with a pack name "
                                     f"(segment {pack!r})")
    for s in rel:
        if _bad_segment(s):
            raise web.HTTPForbidden(text=f"forbidden: {'/'.join(rel)!r} is not a path inside the web folder of "
                                         f"{pack!r} (segment {s!r})")
    return pack, rel


def _bad_segment(s: str) -> bool:
    """Empty, a dot name, or something that is more than one name (a separator, a NUL, a drive)."""
    return s in ("", ".", "..") or any(c in s for c in "/\\\0") or (s[0].isalpha() and s[1:2] == ":")
