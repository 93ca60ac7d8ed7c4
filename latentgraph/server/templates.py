"""The frontend's templates dialog: ComfyUI's workflow templates, offered only when latentgraph can
run them, and the example workflows that custom-node packs ship.

Core templates come from the ``comfyui-workflow-templates`` packages (the ``frontend`` extra): a
core package whose manifest names every file and the package holding it, a JSON package
(``index.json``, its translations ``index.{locale}.json``, one ``{name}.json`` per template) and
media bundles (thumbnails, provider logos). They are served at the root only, as ComfyUI serves
them: ``/templates/index.json``, ``/templates/index.{locale}.json``, ``/templates/index_logo.json``,
``/templates/{name}.json``, ``/templates/{name}-1.webp`` (and ``-2``), ``/templates/logo/...``.
Only names the manifest declares are served, so no URL reaches a file outside the packages.

The indexes list a template only when every node type of its workflow (the nodes inside its
subgraph definitions included) is in the node registry, frontend-only nodes and the file's own
subgraph ids aside; a category left empty is dropped. The verdicts are computed once per server,
on the first request for an index (every template's JSON is read, each size-checked first).

Pack templates, as ComfyUI: ``GET /workflow_templates`` maps each loaded folder pack with an
``example_workflows`` (or ``example``, ``examples``, ``workflow``, ``workflows``) folder to the
names of its ``.json`` files; ``GET /workflow_templates/{pack}/{file}`` serves one file of it
(the frontend also asks for ``{name}.jpg`` thumbnails there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from aiohttp import web

from ..graph.errors import LatentgraphError
from ..graph.ui_format import FRONTEND_ONLY
from .extensions import content_type, stays_inside
from .limits import BadInput, parse_json

log = logging.getLogger("latentgraph.server")

MAX_TEMPLATE_BYTES = 16 * 2**20  # one template or index JSON file, checked with stat before reading
MAX_PACK_TEMPLATES = 2_000  # .json files listed per pack
EXAMPLE_FOLDERS = ("example_workflows", "example", "examples", "workflow", "workflows")
INSTALL_HINT = "pip install 'latentgraph[frontend]'"
NOT_INSTALLED = f"comfyui-workflow-templates is not installed ({INSTALL_HINT})"
_INDEX_NAME = re.compile(r"index(\.[A-Za-z0-9_-]+)?\.json")


class TemplatesError(LatentgraphError):
    """The templates package is there but its index cannot be read."""


# -- where the files are ---------------------------------------------------------------------
@dataclass(frozen=True)
class TemplateFiles:
    """Where template files come from: ``path(name)`` is the file a URL name stands for, or None
    when that name is not one of them."""

    label: str  # for messages: the package or folder
    path: Callable[[str], Path | None]


def package_files() -> TemplateFiles | None:
    """The installed packages (the split ones since 0.3, else the older single package with a
    ``templates`` folder), or None when neither is installed or its manifest is unreadable."""
    try:
        import comfyui_workflow_templates_core as core  # type: ignore[import-not-found]
    except ImportError:
        return _single_package()
    try:
        manifest = core.load_manifest()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("templates: cannot read the manifest of comfyui-workflow-templates-core: %s", exc)
        return None
    owner = {a.filename: entry.template_id for entry in manifest.templates.values() for a in entry.assets}

    def path(name: str) -> Path | None:
        template_id = owner.get(name)
        if template_id is None:
            return None
        try:
            return Path(core.get_asset_path(template_id, name))
        except (FileNotFoundError, KeyError):  # its media bundle is not installed
            return None

    return TemplateFiles("comfyui-workflow-templates", path)


def _single_package() -> TemplateFiles | None:
    try:
        import importlib.resources

        import comfyui_workflow_templates  # type: ignore[import-not-found]
    except ImportError:
        return None
    root = Path(str(importlib.resources.files(comfyui_workflow_templates) / "templates"))
    return folder_files(root) if root.is_dir() else None


def folder_files(root: str | Path) -> TemplateFiles:
    """Every file under ``root``, by its relative path (a folder laid out as ComfyUI's single
    templates folder); a name that is not a plain relative path, or leaves ``root``, is None."""
    root = Path(root)

    def path(name: str) -> Path | None:
        parts = name.split("/")
        if any(_bad_segment(p) for p in parts):
            return None
        found = root.joinpath(*parts)
        return found if stays_inside(root, found) and found.is_file() else None

    return TemplateFiles(str(root), path)


def _bad_segment(s: str) -> bool:
    """Empty, a dot name, or more than one name (a separator, a NUL, a drive)."""
    return s in ("", ".", "..") or any(c in s for c in "\\\0") or (s[0].isalpha() and s[1:2] == ":")


# -- what a template needs -------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """One template of the index and whether latentgraph offers it."""

    name: str
    title: str
    category: str
    missing: tuple[str, ...] = ()  # node types the registry lacks
    problem: str | None = None  # its workflow cannot be read
    families: tuple[str, ...] = ()  # the index's model tags latentgraph cannot load

    @property
    def offered(self) -> bool:
        return not self.missing and not self.families and self.problem is None

    @property
    def reason(self) -> str:
        parts = [self.problem] if self.problem else []
        if self.missing:
            parts.append("missing nodes: " + ", ".join(self.missing))
        if self.families:
            parts.append("models latentgraph cannot load: " + ", ".join(self.families))
        return "; ".join(parts)

    def to_json(self) -> dict:
        out = {"name": self.name, "title": self.title, "category": self.category}
        return out if self.offered else {**out, "missing": list(self.missing), "reason": self.reason}


# The index's `models` tags of the model families latentgraph loads (and "None": no model). A
# template whose nodes all exist but which names another family (Anima, SD3.5, Qwen...) would
# only fail at its loader, so it is not offered either.
LOADABLE_MODEL_TAGS = frozenset({"SD1.5", "SD1", "SD2", "SD2.1", "SDXL", "SDXL Turbo", "Stability", "None"})


def foreign_models(tags) -> tuple[str, ...]:
    """The tags of ``tags`` (an index entry's `models`) naming families latentgraph lacks."""
    if not isinstance(tags, list):
        return ()
    return tuple(sorted({str(t) for t in tags if str(t) not in LOADABLE_MODEL_TAGS}))


def read_json(path: Path, what: str):
    """A template or index file, refused past MAX_TEMPLATE_BYTES before it is read."""
    try:
        size = path.stat().st_size
        if size > MAX_TEMPLATE_BYTES:
            raise ValueError(f"{what} is {size:,} bytes, over MAX_TEMPLATE_BYTES = {MAX_TEMPLATE_BYTES:,}")
        return parse_json(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read {what}: {exc.strerror or exc}") from None
    except BadInput as exc:
        raise ValueError(f"{what}: {exc}") from None


def node_types(workflow) -> tuple[set[str], set[str]]:
    """The node types a UI workflow uses (its subgraph definitions', nested ones included) and
    the ids of the subgraphs it defines; ValueError when it is not shaped as one."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise ValueError("not a UI workflow (no nodes list)")
    types: set[str] = set()
    ids: set[str] = set()
    pending = [workflow]
    while pending:
        graph = pending.pop()
        for n in graph.get("nodes") or []:
            kind = n.get("type") if isinstance(n, dict) else None
            if not isinstance(kind, str):
                raise ValueError("a node has no type")
            types.add(kind)
        subgraphs = (graph.get("definitions") or {}).get("subgraphs") or []
        for sub in subgraphs if isinstance(subgraphs, list) else []:
            if isinstance(sub, dict):
                ids.add(str(sub.get("id")))
                pending.append(sub)
    return types, ids


def missing_nodes(workflow, known: Callable[[str], bool]) -> tuple[str, ...]:
    """The node types of ``workflow`` that ``known`` refuses, frontend-only ones and the
    workflow's own subgraph ids aside (sorted)."""
    types, ids = node_types(workflow)
    return tuple(sorted(t for t in types if t not in FRONTEND_ONLY and t not in ids and not known(t)))


def judge(files: TemplateFiles, name: str, title: str, category: str, known: Callable[[str], bool],
          models=None) -> Verdict:
    path = files.path(f"{name}.json")
    families = foreign_models(models)
    try:
        if path is None:
            raise ValueError(f"{name}.json is not in {files.label}")
        return Verdict(name, title, category, missing_nodes(read_json(path, f"{name}.json"), known), None, families)
    except ValueError as exc:
        return Verdict(name, title, category, problem=str(exc), families=families)


def categories(index) -> list[dict]:
    """The categories of an index file; ValueError when it is not a list of them."""
    if not isinstance(index, list) or not all(isinstance(c, dict) and isinstance(c.get("templates"), list)
                                              for c in index):
        raise ValueError("not a templates index (a list of categories with templates)")
    return index


def entries(index: list[dict]) -> Iterable[tuple[str, str, str, object]]:
    """(name, title, category title, model tags) of every template of an index."""
    for cat in index:
        for t in cat["templates"]:
            if isinstance(t, dict) and isinstance(t.get("name"), str):
                yield (t["name"], str(t.get("title") or t["name"]), str(cat.get("title") or cat.get("category") or ""),
                       t.get("models"))


def load_index(files: TemplateFiles, name: str = "index.json") -> list[dict]:
    path = files.path(name)
    if path is None:
        raise TemplatesError(f"templates: {name} is not in {files.label}")
    try:
        return categories(read_json(path, name))
    except ValueError as exc:
        raise TemplatesError(f"templates: {files.label}: {exc}") from None


def survey(files: TemplateFiles, known: Callable[[str], bool]) -> list[Verdict]:
    """A verdict for every template of index.json, in its order."""
    return [judge(files, n, t, c, known, m) for n, t, c, m in entries(load_index(files))]


def filter_index(index: list[dict], offered: Callable[[str], bool]) -> list[dict]:
    """The index with only the offered templates; categories left empty dropped."""
    out = []
    for cat in index:
        kept = [t for t in cat["templates"] if isinstance(t, dict) and offered(t.get("name"))]
        if kept:
            out.append({**cat, "templates": kept})
    return out


def blockers(verdicts: Iterable[Verdict]) -> list[tuple[str, int]]:
    """Missing node types by how many templates each one hides, most first."""
    counts = Counter(kind for v in verdicts for kind in v.missing)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def format_survey(verdicts: list[Verdict], show_all: bool, as_json: bool, top: int = 20) -> str:
    """What ``latentgraph templates`` prints."""
    offered = [v for v in verdicts if v.offered]
    hidden = [v for v in verdicts if not v.offered]
    if as_json:
        doc = {"total": len(verdicts), "offered": [v.to_json() for v in offered]}
        if show_all:
            doc["hidden"] = [v.to_json() for v in hidden]
            doc["missing_nodes"] = dict(blockers(hidden))
        return json.dumps(doc, indent=1) + "\n"
    width = max((len(v.name) for v in (verdicts if show_all else offered)), default=0)
    lines = [f"{v.name:<{width}}  {v.title}  [{v.category}]" for v in offered]
    if show_all:
        lines += ["", f"hidden ({len(hidden)}):"]
        lines += [f"{v.name:<{width}}  {v.title}  [{v.category}]  {v.reason}" for v in hidden]
        wanted = blockers(hidden)[:top]
        if wanted:
            lines += ["", f"node types hiding the most templates (top {len(wanted)}):"]
            lines += [f"  {count:4d}  {kind}" for kind, count in wanted]
    tail = "" if show_all else "; `latentgraph templates --all` lists them"
    lines.append(f"{len(offered)} of {len(verdicts)} templates offered; {len(hidden)} hidden{tail}")
    return "\n".join(lines) + "\n"


# -- the server's side -----------------------------------------------------------------------
class Catalog:
    """The verdicts and filtered indexes for one registry, computed on first use (thread-safe)."""

    def __init__(self, files: TemplateFiles, known: Callable[[str], bool]):
        self.files = files
        self.known = known
        self._lock = threading.Lock()
        self._verdicts: dict[str, Verdict] | None = None
        self._indexes: dict[str, bytes] = {}

    def verdicts(self) -> dict[str, Verdict]:
        with self._lock:
            if self._verdicts is None:
                self._verdicts = {v.name: v for v in survey(self.files, self.known)}
                self._report(list(self._verdicts.values()))
            return self._verdicts

    @staticmethod
    def _report(verdicts: list[Verdict]) -> None:
        for v in verdicts:
            if v.problem:
                log.warning("templates: %s is not offered: %s", v.name, v.problem)
        offered = sum(v.offered for v in verdicts)
        lacking = sum(bool(v.missing) for v in verdicts)
        foreign = sum(bool(v.families) and not v.missing and not v.problem for v in verdicts)
        unreadable = sum(v.problem is not None for v in verdicts)
        extra = f", {foreign} (models it cannot load)" if foreign else ""
        extra += f"; {unreadable} unreadable" if unreadable else ""
        log.info("templates: %d of %d offered; %d hidden (nodes latentgraph lacks)%s; "
                 "`latentgraph templates --all` lists them", offered, len(verdicts), lacking, extra)

    def offered(self, name) -> bool:
        """Whether template ``name`` is offered (one an index names that index.json does not
        is judged alone, once)."""
        if not isinstance(name, str):
            return False
        verdicts = self.verdicts()
        if name not in verdicts:
            with self._lock:
                verdicts.setdefault(name, judge(self.files, name, name, "", self.known))
        return verdicts[name].offered

    def index_bytes(self, name: str) -> bytes:
        """The filtered index file ``name`` as JSON bytes (TemplatesError if unreadable)."""
        cached = self._indexes.get(name)
        if cached is None:
            index = filter_index(load_index(self.files, name), self.offered)
            cached = self._indexes[name] = json.dumps(index, ensure_ascii=False).encode()
        return cached


class TemplateRoutes:
    """``GET /templates/{name}`` over the installed packages (or what ``find`` returns)."""

    def __init__(self, registry, find: Callable[[], TemplateFiles | None] | None = None):
        self.known = registry.__contains__
        self.find = find if find is not None else package_files
        self._catalog: Catalog | None = None
        self._looked = False
        self._lock = threading.Lock()

    def catalog(self) -> Catalog | None:
        """The catalog, the packages looked for on the first call (saying once if absent)."""
        with self._lock:
            if not self._looked:
                self._looked = True
                files = self.find()
                if files is None:
                    log.warning("templates: %s; the templates dialog stays empty", NOT_INSTALLED)
                else:
                    self._catalog = Catalog(files, self.known)
            return self._catalog

    def install(self, app: web.Application) -> None:
        """The route at the root only (ComfyUI has no /api/templates); add it before a static
        route at / would shadow it."""
        app.router.add_get("/templates/{name:.+}", self.get_file)

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        catalog = self._catalog if self._looked else await asyncio.to_thread(self.catalog)
        if catalog is None:
            raise web.HTTPNotFound(text=f"no workflow templates: {NOT_INSTALLED}")
        path = catalog.files.path(name)
        if path is None:
            raise web.HTTPNotFound(text=f"no template file {name!r}")
        if _INDEX_NAME.fullmatch(name) and name != "index.schema.json":
            try:
                body = await asyncio.to_thread(catalog.index_bytes, name)
            except TemplatesError as exc:
                log.error("%s", exc)
                raise web.HTTPInternalServerError(text=str(exc)) from None
            return web.Response(body=body, content_type="application/json", charset="utf-8")
        return web.FileResponse(path, headers={"Content-Type": content_type(path)})


# -- example workflows of custom-node packs --------------------------------------------------
class PackTemplates:
    """``/workflow_templates`` and ``/workflow_templates/{pack}/{file}`` over the loaded folder
    packs' example folders (entry-point packs have no folder of their own to look in)."""

    def __init__(self, plugins):
        self.folders: dict[str, list[Path]] = {}
        for p in plugins:
            source = Path(p.source)
            if p.status == "loaded" and not p.source.startswith("entry point") and source.is_dir():
                found = [source / f for f in EXAMPLE_FOLDERS if (source / f).is_dir()]
                if found:
                    self.folders[p.name] = found

    def routes(self) -> list:
        return [("GET", "/workflow_templates", self.get_list),
                ("GET", "/workflow_templates/{pack}/{file}", self.get_file)]

    def listing(self) -> dict[str, list[str]]:
        """Pack -> its example workflows' names (no .json), packs without any left out."""
        out = {}
        for pack, folders in self.folders.items():
            names = list(dict.fromkeys(n for folder in folders for n in _json_names(folder)))
            if names:
                out[pack] = names[:MAX_PACK_TEMPLATES]
        return out

    async def get_list(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self.listing))

    async def get_file(self, request: web.Request) -> web.StreamResponse:
        pack, name = request.match_info["pack"], request.match_info["file"]
        folders = self.folders.get(pack)
        if folders is None:
            raise web.HTTPNotFound(text=f"no pack {pack!r} with example workflows")
        if _bad_segment(name) or "/" in name:
            raise web.HTTPForbidden(text=f"forbidden: {name!r} is not a file name")
        for folder in folders:
            path = folder / name
            if stays_inside(folder, path) and path.is_file():
                return web.FileResponse(path, headers={"Content-Type": content_type(path)})
        raise web.HTTPNotFound(text=f"no file {name!r} in the example workflows of {pack!r}")


def _json_names(folder: Path) -> list[str]:
    """The names (without .json) of the .json files directly in ``folder``, sorted."""
    try:
        with os.scandir(folder) as it:
            files = [e.name for e in it if e.name.endswith(".json") and not e.name.startswith(".")
                     and e.is_file()]
    except OSError:
        return []
    return [f[: -len(".json")] for f in sorted(files)[:MAX_PACK_TEMPLATES]]
