"""What ComfyUI's web frontend needs from the server besides the prompt API: its static files
(from the ``comfyui-frontend-package`` wheel, or a folder) and the boot routes — settings,
users (one user), user data files, i18n, subgraphs, the extension list (the templates dialog's
routes are in templates.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote

from aiohttp import web

from ..graph.fileio import write_atomic
from .files import clean_name
from .limits import BadInput, parse_json

USER = "default"  # one user, as ComfyUI without --multi-user
SETTINGS_FILE = "comfy.settings.json"
MAX_USER_PATH_BYTES = 1024


def _package_folder(module: str, sub: str) -> Path | None:
    """Folder ``sub`` of installed package ``module``; None when it is not installed."""
    import importlib
    import importlib.resources

    try:
        package = importlib.import_module(module)
    except ImportError:
        return None
    return Path(str(importlib.resources.files(package) / sub))


def find_frontend(choice: str | Path | None) -> Path | None:
    """``auto``: the installed comfyui-frontend-package's static folder, if any; ``none``:
    no frontend; anything else: a folder holding index.html."""
    if choice is None or str(choice) == "none":
        return None
    if str(choice) == "auto":
        root = _package_folder("comfyui_frontend_package", "static")
        return root if root is not None and (root / "index.html").is_file() else None
    root = Path(choice)
    if not (root / "index.html").is_file():
        raise ValueError(f"--frontend {choice}: no index.html in that folder")
    return root


def find_docs(choice: str | Path | None) -> Path | None:
    """The node help pages: ``auto``: the installed comfyui-embedded-docs package's docs
    folder, if any; ``none``: none; anything else: a folder of ``<Node>/<locale>.md``."""
    if choice is None or str(choice) == "none":
        return None
    if str(choice) == "auto":
        root = _package_folder("comfyui_embedded_docs", "docs")
        return root if root is not None and root.is_dir() else None
    if not Path(choice).is_dir():
        raise ValueError(f"docs {choice}: no such folder")
    return Path(choice)


def install_docs(app: web.Application, root: Path | None) -> None:
    """``/docs/<Node>/<locale>.md`` (and the pages' images) from ``root``, at the root path only
    as ComfyUI serves them; installed before the frontend's ``/`` so that it is not shadowed. A
    missing page is a plain 404 (never index.html: the frontend reads text/html as no page)."""
    if root is not None:
        app.router.add_static("/docs", root, follow_symlinks=False)


class FrontendRoutes:
    def __init__(self, user_dir: Path, web_root: Path | None):
        self.user_root = Path(user_dir) / USER
        self.web_root = web_root

    def routes(self) -> list:
        return [("GET", "/settings", self.get_settings), ("POST", "/settings", self.post_settings),
                ("GET", "/settings/{id}", self.get_setting), ("POST", "/settings/{id}", self.post_setting),
                ("GET", "/users", self.get_users), ("POST", "/users", self.post_users),
                ("GET", "/i18n", self.empty_object),  # /workflow_templates: templates.PackTemplates
                ("GET", "/global_subgraphs", self.empty_object),  # /experiment/models: model_library.py
                ("GET", "/userdata", self.list_userdata), ("GET", "/userdata/{file:.+}", self.get_userdata),
                ("POST", "/userdata/{file:.+}", self.post_userdata),
                ("DELETE", "/userdata/{file:.+}", self.delete_userdata)]

    # -- settings -----------------------------------------------------------------------------
    def _settings_path(self) -> Path:
        return self.user_root / SETTINGS_FILE

    def _settings(self) -> dict:
        try:
            data = json.loads(self._settings_path().read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_settings(self, settings: dict) -> None:
        write_atomic(self._settings_path(), json.dumps(settings, indent=4).encode())

    async def get_settings(self, request: web.Request) -> web.Response:
        return web.json_response(self._settings())

    async def get_setting(self, request: web.Request) -> web.Response:
        return web.json_response(self._settings().get(request.match_info["id"]))

    async def _json(self, request: web.Request):
        try:
            return parse_json(await request.read())
        except BadInput as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def post_settings(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="settings must be a JSON object")
        self._save_settings({**self._settings(), **body})
        return web.Response(status=200)

    async def post_setting(self, request: web.Request) -> web.Response:
        value = await self._json(request)
        self._save_settings({**self._settings(), request.match_info["id"]: value})
        return web.Response(status=200)

    # -- users --------------------------------------------------------------------------------
    async def get_users(self, request: web.Request) -> web.Response:
        return web.json_response({"storage": "server", "migrated": self.user_root.is_dir()})

    async def post_users(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "this server has a single user"}, status=400)

    async def empty_object(self, request: web.Request) -> web.Response:
        return web.json_response({})

    # -- user data ----------------------------------------------------------------------------
    def _user_path(self, rel: str) -> Path:
        rel = clean_name(unquote(rel), "path")
        if len(rel.encode("utf-8", "surrogatepass")) > MAX_USER_PATH_BYTES:
            raise web.HTTPBadRequest(text=f"the path is longer than {MAX_USER_PATH_BYTES} bytes (MAX_USER_PATH_BYTES)")
        path = (self.user_root / rel).resolve()
        root = self.user_root.resolve()
        if path != root and root not in path.parents:
            raise web.HTTPForbidden(text="the path leaves the user folder")
        return path

    def _raw_tail(self, request: web.Request) -> list[str]:
        """The still-encoded segments after /userdata/ (the frontend encodes a whole relative
        path into one segment, so it must be split before decoding)."""
        raw = request.raw_path.split("?", 1)[0]
        tail = raw.split("/userdata/", 1)[1]
        return tail.split("/")

    def _info(self, path: Path, rel: str) -> dict:
        st = path.stat()
        return {"path": rel, "size": st.st_size, "modified": st.st_mtime * 1000, "created": st.st_ctime * 1000}

    async def list_userdata(self, request: web.Request) -> web.Response:
        q = request.query
        if not q.get("dir"):
            raise web.HTTPBadRequest(text="Directory not provided")
        base = self._user_path(q["dir"])
        if not base.is_dir():
            raise web.HTTPNotFound(text="Directory not found")
        recurse = q.get("recurse", "").lower() == "true"
        files = sorted(p for p in (base.rglob("*") if recurse else base.glob("*")) if p.is_file())
        rels = [p.relative_to(base).as_posix() for p in files]
        if q.get("full_info", "").lower() == "true":
            return web.json_response([self._info(p, r) for p, r in zip(files, rels)])
        if q.get("split", "").lower() == "true":
            return web.json_response([[r, *r.split("/")] for r in rels])
        return web.json_response(rels)

    async def get_userdata(self, request: web.Request) -> web.StreamResponse:
        path = self._user_path("/".join(self._raw_tail(request)))
        if not path.is_file():
            raise web.HTTPNotFound(text="File not found")
        return web.FileResponse(path)

    async def post_userdata(self, request: web.Request) -> web.Response:
        segments = self._raw_tail(request)
        overwrite = request.query.get("overwrite", "true").lower() != "false"
        full_info = request.query.get("full_info", "").lower() == "true"
        if len(segments) == 3 and segments[1] == "move":
            source, dest = self._user_path(segments[0]), self._user_path(segments[2])
            if not source.is_file():
                raise web.HTTPNotFound(text="Source file not found")
            if dest.exists() and not overwrite:
                raise web.HTTPConflict(text="Destination file already exists")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, dest)
            target = dest
        else:
            target = self._user_path("/".join(segments))
            if target.exists() and not overwrite:
                raise web.HTTPConflict(text="File already exists")
            body = await request.read()
            try:
                write_atomic(target, body)
            except OSError as exc:
                raise web.HTTPBadRequest(text=f"cannot write: {exc.strerror or exc}") from None
        rel = target.relative_to(self.user_root.resolve()).as_posix()
        return web.json_response(self._info(target, rel) if full_info else rel)

    async def delete_userdata(self, request: web.Request) -> web.Response:
        path = self._user_path("/".join(self._raw_tail(request)))
        if not path.is_file():
            raise web.HTTPNotFound(text="File not found")
        path.unlink()
        return web.Response(status=204)

    # -- the frontend's files -----------------------------------------------------------------
    def extension_scripts(self) -> list[str]:
        if self.web_root is None:
            return []
        folder = self.web_root / "extensions"
        return sorted("/" + p.relative_to(self.web_root).as_posix() for p in folder.rglob("*.js")) if folder.is_dir() else []

    async def index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(self.web_root / "index.html",
                                headers={"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"})

    def install_static(self, app: web.Application) -> None:
        if self.web_root is None:
            return
        app.router.add_get("/", self.index)
        app.router.add_static("/", self.web_root, follow_symlinks=False)

