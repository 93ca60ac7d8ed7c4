"""Plugins: node packs from installed packages and from custom-node folders.

A pack is found two ways:

- an installed distribution exposing the entry-point group ``latentgraph.nodes``; the entry
  point names a function that receives the registry (``def register(registry): ...``);
- a module (``name.py``) or package (``name/__init__.py``) in a folder given with
  ``--custom-nodes DIR`` (or ``custom_nodes:`` in a config file, or in ComfyUI's
  ``extra_model_paths.yaml``). It registers through a ``register(registry)`` function, by
  defining ``@node`` functions, or, written for ComfyUI, by exporting ``NODE_CLASS_MAPPINGS``
  (and ``NODE_DISPLAY_NAME_MAPPINGS``), read by :mod:`latentgraph.plugins.comfy_v1`.

Each pack loads alone: it registers into a registry of its own, and only when all of it worked
are its nodes added. A pack that fails (syntax error, missing dependency, exception at import,
a bad declaration) is reported with its name and error and nothing of it is added. ComfyUI
packs import ComfyUI's modules (``folder_paths``, ``comfy.*``, ``server``, ``nodes``, ...):
they get latentgraph's compatibility layer (:mod:`latentgraph.comfy_compat`), and one that
needs a module or name the layer lacks is reported as needing ComfyUI, with that name. The
others load.

Names. A bare node name belongs to exactly one provider. Built-in names are never replaced: a
pack's node with a built-in name is registered as ``pack/Name``. When two packs define the same
name, neither gets the bare name: each node is registered as ``pack/Name``, and a workflow
asking for the bare name is told which ones exist. Every renaming is in the pack's report.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import re
import sys
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..graph.errors import DeclarationError, LatentgraphError
from ..graph.registry import NodeRegistry
from .web import web_folder
from .. import comfy_compat
from ..comfy_compat import COMFY_MODULES  # noqa: F401 - ComfyUI's top-level modules (api_usage uses them)

ENTRY_POINT_GROUP = "latentgraph.nodes"
MODULE_PREFIX = "latentgraph_custom_nodes"
LOADED, FAILED, NEEDS_COMFYUI = "loaded", "failed", "needs ComfyUI"


@dataclass
class PluginInfo:
    """What happened to one pack."""

    name: str
    source: str  # "entry point NAME = module:function (distribution X.Y)" or the file/folder path
    kind: str | None = None  # "latentgraph" or "comfyui" (NODE_CLASS_MAPPINGS); None if it never got that far
    status: str = LOADED
    error: str | None = None
    needs: str | None = None  # the ComfyUI module or name it needed that the compatibility layer lacks
    missing: list[str] = field(default_factory=list)  # ComfyUI names it asked for and did not get
    nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    import_seconds: float = 0.0
    web_dir: str | None = None  # its web extension's folder, served at /extensions/<name>/ (see plugins/web.py)
    # a ComfyUI pack's classes by node name, with their display names (for nodes.NODE_CLASS_MAPPINGS)
    classes: dict = field(default_factory=dict, repr=False)

    def to_json(self) -> dict:
        return {"name": self.name, "source": self.source, "kind": self.kind, "status": self.status,
                "error": self.error, "needs": self.needs, "missing": list(self.missing), "nodes": list(self.nodes), "notes": list(self.notes),
                "import_ms": round(self.import_seconds * 1000, 2), "web_dir": self.web_dir}


class PluginError(LatentgraphError):
    """A custom-node folder or config file cannot be used."""


@dataclass
class _Candidate:
    name: str
    source: str
    entry_point: Any = None
    path: Path | None = None
    error: str | None = None


def discover(folders: Iterable[str | Path] = (), entry_points: bool = True) -> list[_Candidate]:
    """Packs to load: entry points (sorted by name), then each folder's modules and packages
    (sorted by name; names starting with '.' or '_' and those ending in '.disabled' are skipped)."""
    found: list[_Candidate] = []
    if entry_points:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            owner = f" ({dist.name} {dist.version})" if dist is not None else ""
            found.append(_Candidate(ep.name, f"entry point {ep.name} = {ep.value}{owner}", entry_point=ep))
    for folder in folders:
        folder = Path(folder).expanduser()
        if folder.is_file() and folder.suffix == ".py":  # one module given directly
            found.append(_Candidate(folder.stem, str(folder), path=folder))
            continue
        if not folder.is_dir():
            problem = "not a folder" if folder.exists() else "folder not found"
            found.append(_Candidate(folder.name or str(folder), str(folder), error=problem))
            continue
        for item in sorted(folder.iterdir(), key=lambda p: p.name):
            if item.name.startswith((".", "_")) or item.name.endswith(".disabled"):
                continue
            if item.is_file() and item.suffix == ".py":
                found.append(_Candidate(item.stem, str(item), path=item))
            elif item.is_dir() and (item / "__init__.py").is_file():
                found.append(_Candidate(item.name, str(item), path=item))
    return found


def load_plugins(registry: NodeRegistry, folders: Iterable[str | Path] = (), *, entry_points: bool = True,
                 env=None) -> list[PluginInfo]:
    """Load every pack found into ``registry``; return (and append to ``registry.plugins``) the
    reports. ``env`` is the Environment ComfyUI packs see through ``folder_paths`` (bound for
    the process: latentgraph.comfy_compat.bind)."""
    if env is not None:
        comfy_compat.bind(env=env)
    staged: list[tuple[PluginInfo, NodeRegistry]] = []
    infos: list[PluginInfo] = []
    seen: dict[str, str] = {p.name: p.source for p in registry.plugins}
    for cand in discover(folders, entry_points):
        info = PluginInfo(cand.name, cand.source)
        infos.append(info)
        if cand.name in seen:
            info.status, info.error = FAILED, f"another pack named '{cand.name}' is already loaded ({seen[cand.name]})"
            continue
        if cand.error is not None:
            info.status, info.error = FAILED, cand.error
            continue
        seen[cand.name] = cand.source
        staging = NodeRegistry()
        start = time.perf_counter()
        _load_one(cand, info, staging)
        info.import_seconds = time.perf_counter() - start
        if info.status == LOADED:
            staged.append((info, staging))
    _commit(registry, staged)
    registry.plugins.extend(infos)
    return infos


def _load_one(cand: _Candidate, info: PluginInfo, staging: NodeRegistry) -> None:
    if cand.path is not None:
        comfy_compat.install(cand.path)
    added_before = set(sys.modules)
    web_before = comfy_compat.extension_web_dirs()
    try:
        with comfy_compat.runtime.loading(cand.name):
            if cand.entry_point is not None:
                target = cand.entry_point.load()
                if not callable(target):
                    raise DeclarationError(f"the entry point names {type(target).__name__}, not a function "
                                           f"that takes the registry")
                info.kind = "latentgraph"
                target(staging)
                info.web_dir = web_folder(sys.modules.get(cand.entry_point.module), None, info.notes)
            else:
                module = _import_path(cand)
                _register_module(module, cand, info, staging)
        injected = [v for k, v in comfy_compat.extension_web_dirs().items() if web_before.get(k) != v]
        if info.web_dir is None and injected and Path(injected[0]).is_dir():  # nodes.EXTENSION_WEB_DIRS[...] = dir
            info.web_dir = str(Path(injected[0]).resolve())
        if not len(staging):
            info.notes.append("no nodes found (define @node functions, a register(registry) function, or "
                              "NODE_CLASS_MAPPINGS)")
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a pack may raise anything, SystemExit included
        needed = _comfy_name(exc)
        asked = comfy_compat.missing_names(cand.name)
        if needed is not None:
            info.status, info.needs = NEEDS_COMFYUI, needed
            info.error = f"needs {needed}, which latentgraph's ComfyUI compatibility layer does not provide"
        elif asked:  # the pack caught the ImportError of a missing name, then failed for want of it
            info.status, info.needs = NEEDS_COMFYUI, asked[0]
            info.error = (f"needs {', '.join(asked)}, which latentgraph's ComfyUI compatibility layer does not "
                          f"provide (then {_describe(exc, cand)})")
        else:
            info.status, info.error = FAILED, _describe(exc, cand)
    info.missing = sorted(set(comfy_compat.missing_names(cand.name)) | ({info.needs} if info.needs else set()))
    if info.status != LOADED and cand.entry_point is None:
        for name in set(sys.modules) - added_before:  # a failed pack leaves no half-imported modules
            if name.startswith(f"{MODULE_PREFIX}.{_safe(cand.name)}"):
                sys.modules.pop(name, None)


def _comfy_name(exc: BaseException) -> str | None:
    """The ComfyUI module or name a pack's import failed on, if that is why it failed: a module
    the layer lacks, ``from comfy.x import name`` of a name it lacks, or an attribute of one
    of its modules."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in COMFY_MODULES:
        return exc.name
    if isinstance(exc, ImportError) and exc.name and exc.name.split(".")[0] in COMFY_MODULES:
        found = re.match(r"cannot import name '([^']+)'", str(exc))
        return f"{exc.name}.{found.group(1)}" if found else exc.name
    if isinstance(exc, AttributeError) and "compatibility layer does not provide it" in str(exc):
        found = re.match(r"module '([^']+)' has no attribute '([^']+)'", str(exc))
        return f"{found.group(1)}.{found.group(2)}" if found else None
    return None


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _import_path(cand: _Candidate) -> types.ModuleType:
    """Import a pack's file or package under latentgraph_custom_nodes.<name> (relative imports work)."""
    if MODULE_PREFIX not in sys.modules:
        root = types.ModuleType(MODULE_PREFIX)
        root.__path__ = []
        sys.modules[MODULE_PREFIX] = root
    modname = f"{MODULE_PREFIX}.{_safe(cand.name)}"
    path = cand.path
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(modname, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(modname, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    spec.loader.exec_module(module)
    return module


def _register_module(module: types.ModuleType, cand: _Candidate, info: PluginInfo, staging: NodeRegistry) -> None:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    entrypoint = getattr(module, "comfy_entrypoint", None)
    if mappings is not None or entrypoint is not None:
        from .comfy_v1 import node_def  # it hands V3 classes to comfy_v3
        from .comfy_v3 import extension_nodes, node_def as v3_node_def

        info.kind = "comfyui"
        if mappings is None:  # a V3 pack; as ComfyUI, NODE_CLASS_MAPPINGS wins when a pack has both
            found = [(None, cls, None, v3_node_def) for cls in extension_nodes(entrypoint)]
        elif not isinstance(mappings, dict):
            raise DeclarationError(f"NODE_CLASS_MAPPINGS must be a dict, got {type(mappings).__name__}")
        else:
            display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
            found = [(str(name), cls, display.get(name), node_def) for name, cls in mappings.items()]
        problems = []
        for name, cls, shown, reader in found:
            try:
                ndef = reader(name, cls, shown, pack=cand.name, source=cand.source)
                staging.register(ndef)
                info.classes[ndef.name] = (cls, ndef.display_name)
            except DeclarationError as exc:
                problems.append(str(exc))
        if problems:
            raise DeclarationError("; ".join(problems))
        info.web_dir = web_folder(module, cand.path, info.notes)
        return
    info.kind = "latentgraph"
    register = getattr(module, "register", None)
    if callable(register):
        register(staging)
    else:
        staging.register_module(module, python_module=f"custom_nodes.{cand.name}", source=cand.source)
    info.web_dir = web_folder(module, cand.path, info.notes)


def _describe(exc: BaseException, cand: _Candidate) -> str:
    """One line: the error and where in the pack it happened."""
    if isinstance(exc, SyntaxError):
        where = f" ({Path(exc.filename).name}, line {exc.lineno})" if exc.filename else ""
        return f"SyntaxError: {exc.msg}{where}"
    if isinstance(exc, ModuleNotFoundError):
        return f"missing dependency: No module named '{exc.name}'" if exc.name else f"missing dependency: {exc}"
    if isinstance(exc, DeclarationError):
        return f"bad declaration: {exc}"
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    root = str(cand.path) if cand.path is not None else None
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if root and f.filename.startswith(root)] or frames[-1:]
    if inside:
        frame = inside[-1]
        text += f" (at {Path(frame.filename).name}:{frame.lineno})"
    return text


def _commit(registry: NodeRegistry, staged: list[tuple[PluginInfo, NodeRegistry]]) -> None:
    """Add the staged packs' nodes under the naming rule of this module's docstring."""
    providers: dict[str, list[str]] = {}
    for info, staging in staged:
        for name in staging:
            providers.setdefault(name, []).append(info.name)
    for info, staging in staged:
        for name in staging:
            ndef = staging[name]
            others = [p for p in providers[name] if p != info.name]
            final = name
            if name in registry and name not in registry.ambiguous:
                final = f"{info.name}/{name}"
                info.notes.append(f"'{name}' is already a node ({registry[name].source}); this one is '{final}'")
            elif others:
                final = f"{info.name}/{name}"
                registry.ambiguous.setdefault(name, [])
                info.notes.append(f"'{name}' is also defined by {', '.join(others)}; this one is '{final}'")
            if final != name:
                ndef = dataclasses.replace(ndef, name=final, display_name=f"{ndef.display_name} ({info.name})")
            if not (ndef.python_module or "").startswith("custom_nodes."):
                ndef = dataclasses.replace(ndef, python_module=f"custom_nodes.{info.name}")
            if ndef.source == "builtin":
                ndef = dataclasses.replace(ndef, source=info.source)
            try:
                registry.register(ndef)
            except DeclarationError as exc:
                info.notes.append(str(exc))
                continue
            if final != name and name in registry.ambiguous:
                registry.ambiguous[name].append(final)
            info.nodes.append(final)
            if name in info.classes:
                comfy_compat.add_pack_nodes({final: info.classes[name]})


CONFIG_KEYS = ("custom_nodes",)


def default_config_path() -> Path | None:
    """$LATENTGRAPH_CONFIG, else $XDG_CONFIG_HOME/latentgraph/config.yaml (~/.config/...) if it exists."""
    import os

    if os.environ.get("LATENTGRAPH_CONFIG"):
        return Path(os.environ["LATENTGRAPH_CONFIG"]).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    path = base / "latentgraph" / "config.yaml"
    return path if path.is_file() else None


def read_config(path: str | Path) -> dict:
    """A latentgraph config file (YAML): ``custom_nodes:`` a folder or a list of folders,
    relative to the file's own folder. Unknown keys are refused."""
    from ..graph.env import read_yaml_file

    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        return {"custom_nodes": []}
    if not isinstance(data, dict):
        raise PluginError(f"{path}: expected a mapping with {', '.join(CONFIG_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise PluginError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(CONFIG_KEYS)})")
    folders = data.get("custom_nodes") or []
    if isinstance(folders, str):
        folders = [folders]
    if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
        raise PluginError(f"{path}: custom_nodes must be a folder or a list of folders")
    return {"custom_nodes": [_relative_to(path.parent, f) for f in folders]}


def _relative_to(base: Path, folder: str) -> Path:
    import os

    p = Path(os.path.expandvars(os.path.expanduser(folder)))
    return p if p.is_absolute() else base / p


def create_plugin_registry(folders: Iterable[str | Path] = (), *, entry_points: bool = True) -> NodeRegistry:
    """The built-in nodes plus every plugin found (see :func:`load_plugins`)."""
    from ..nodes import create_registry

    registry = create_registry()
    load_plugins(registry, folders, entry_points=entry_points)
    return registry
