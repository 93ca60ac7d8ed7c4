"""ComfyUI's module API for custom-node packs, over latentgraph's own objects.

Packs written for ComfyUI import its modules: ``folder_paths``, ``comfy.utils``,
``comfy.model_management``, ``server``, ``nodes``, ``comfy_execution.graph_utils``, ... This
package provides them, and only them, as one module tree (``tree/``, laid out and named as
ComfyUI's) implemented on latentgraph's Environment, executor, server and values. It is the
whole boundary: nothing else in latentgraph knows about ComfyUI's module names, and nothing
here is reached from latentgraph's own code paths except through :func:`install`,
:func:`bind` and the node-call hook the V1/V3 adapters use.

How a pack gets them. :func:`install` puts a finder first in ``sys.meta_path`` that answers
ComfyUI's top-level names, and only for imports made from a loaded pack's folder or from the
tree itself (latentgraph's own code and other libraries never see it): so an unrelated module
that happens to be called ``server`` or ``nodes`` does not reach a pack, and a pack does not
reach anyone else's imports. A real ComfyUI on ``sys.path`` (a ``comfy`` package beside
``folder_paths.py`` and ``execution.py``) is never shadowed: then nothing is installed and
packs import ComfyUI itself. Once a pack has imported one of the tree's modules, it is in
``sys.modules`` under ComfyUI's name, as in ComfyUI. A name the tree lacks is an ImportError or
AttributeError that names it, and the loader reports it as what the pack needed (see
:mod:`latentgraph.comfy_compat.runtime`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import json
import os
import sys
from pathlib import Path

from . import runtime
from .runtime import bind, current_env, missing_names

__all__ = ["COMFY_MODULES", "PACK_NODES", "TREE", "add_pack_nodes", "bind", "current_env", "extension_web_dirs", "import_module", "install",
           "missing_names", "on_prompt",
           "pack_routes", "provides", "real_comfyui"]

TREE = Path(__file__).resolve().parent / "tree"
# Top-level modules of a ComfyUI install that packs import
COMFY_MODULES = frozenset({
    "comfy", "comfy_extras", "comfy_execution", "comfy_api", "comfy_api_nodes", "comfy_config", "folder_paths",
    "server", "nodes", "execution", "node_helpers", "latent_preview", "comfyui_version", "cuda_malloc", "app",
    "model_management", "protocol"})
# ComfyUI's top-level modules and packages that packs import (plugins.COMFY_MODULES lists them)
TOP_LEVEL = frozenset(p.stem for p in TREE.iterdir() if not p.name.startswith("_") and (
    p.suffix == ".py" or (p / "__init__.py").is_file()))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the tree's top-level modules for importers inside a pack or the tree (see the
    module docstring); submodules are then found through the package's ``__path__``."""

    def __init__(self):
        self.roots: list[str] = [str(TREE) + os.sep]

    def allow(self, folder: str | Path) -> None:
        for path in {Path(folder).absolute(), Path(folder).resolve()}:
            root = str(path) + (os.sep if path.is_dir() else "")
            if root not in self.roots:
                self.roots.append(root)

    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in COMFY_MODULES:
            return None
        if "." in fullname:  # a submodule: the tree's package finds its own; name the ones it lacks
            if _loaded(top) is None or _in_tree(fullname):
                return None
            if fullname in _extras_modules():
                return importlib.util.spec_from_loader(fullname, _ExtrasLoader())
            raise runtime.missing_module(fullname)
        if not self._from_a_pack():
            return None
        if fullname not in TOP_LEVEL:  # a ComfyUI module the tree lacks: never an unrelated namesake
            raise runtime.missing_module(fullname)
        return spec_for(fullname)

    def _from_a_pack(self) -> bool:
        """Whether the import statement being run is in a pack's file or in the tree."""
        frame = sys._getframe(2)
        for _ in range(40):
            if frame is None:
                return runtime.allowed()
            name = frame.f_code.co_filename
            if not name.startswith("<frozen") and "importlib" not in name:
                return runtime.allowed() or any(name.startswith(r) or name == r for r in self.roots)
            frame = frame.f_back
        return runtime.allowed()


@functools.lru_cache(maxsize=1)
def _extras_modules() -> dict[str, list[str]]:
    """ComfyUI's ``comfy_extras.nodes_*`` modules -> the core node names each defines."""
    listed = json.loads((Path(__file__).resolve().parents[1] / "data" / "comfy_core_nodes.json").read_text())
    found: dict[str, list[str]] = {}
    for entry in listed["nodes"]:
        if entry["module"].startswith("comfy_extras."):
            found.setdefault(entry["module"], []).append(entry["name"])
    return found


class _ExtrasLoader(importlib.abc.Loader):
    """Makes ``comfy_extras.nodes_x``: a module whose names are latentgraph's V1 classes of the
    nodes ComfyUI defines there; a node latentgraph lacks is a missing name."""

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        name = module.__name__
        module.__getattr__ = functools.partial(extras_node, name)
        module.__doc__ = f"ComfyUI's {name}: latentgraph's nodes of that module as V1 classes."


def extras_node(module: str, attr: str):
    """The V1 class of the latentgraph node that ComfyUI defines as ``module.attr`` (a
    ``comfy_extras.nodes_*`` module), else the layer's missing-name error. Tree files for those
    modules (which add ComfyUI's plain functions) end with it as their ``__getattr__``."""
    if attr in _extras_modules().get(module, ()):
        with runtime.allow_imports():
            classes = importlib.import_module("nodes").NODE_CLASS_MAPPINGS
        if attr in classes:
            return classes[attr]
    raise runtime.missing(module, attr)


def _in_tree(fullname: str) -> bool:
    parts = fullname.split(".")
    base = TREE.joinpath(*parts)
    return (base / "__init__.py").is_file() or base.with_suffix(".py").is_file()


def spec_for(fullname: str):
    """The ModuleSpec of the tree's top-level module ``fullname`` (a file or a package)."""
    package = TREE / fullname
    if (package / "__init__.py").is_file():
        return importlib.util.spec_from_file_location(fullname, package / "__init__.py",
                                                      submodule_search_locations=[str(package)])
    file = TREE / f"{fullname}.py"
    return importlib.util.spec_from_file_location(fullname, file) if file.is_file() else None


_FINDER = _Finder()


def real_comfyui() -> Path | None:
    """The folder of a real ComfyUI importable from ``sys.path``, else None."""
    import importlib.machinery

    spec = importlib.machinery.PathFinder.find_spec("comfy")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]).parent
    return root if (root / "folder_paths.py").is_file() and (root / "execution.py").is_file() else None


def install(pack_folder: str | Path | None = None) -> bool:
    """Make the tree importable for packs (idempotent); ``pack_folder`` is one more folder
    whose files may import it. False when a real ComfyUI is importable (nothing installed)."""
    if real_comfyui() is not None:
        return False
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
    if pack_folder is not None:
        _FINDER.allow(pack_folder)
        _preload()
    return True


# What ComfyUI has imported before it loads any pack. Packs rely on it: UltimateSDUpscale
# deletes from sys.modules every module its own import added, so a torch first imported by
# that import would be imported a second time later (and crash the process).
PRELOAD = ("torch", "numpy", "PIL.Image", "folder_paths", "comfy.utils", "comfy.model_management",
           "comfy.samplers", "comfy.sample", "node_helpers", "nodes", "server", "latent_preview", "execution",
           "comfy_execution.graph", "comfy_execution.graph_utils")


@functools.lru_cache(maxsize=1)
def _preload() -> None:
    with runtime.allow_imports():
        for name in PRELOAD:
            importlib.import_module(name)


def import_module(name: str):
    """Import a tree module from latentgraph's own code (tests, tools) as a pack would."""
    import importlib

    install()
    with runtime.allow_imports():
        return importlib.import_module(name)


def _loaded(name: str):
    """The tree's module ``name`` if a pack has imported it, else None (never ComfyUI's own)."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None) or ""
    return module if origin.startswith(str(TREE) + os.sep) else None


def pack_routes() -> list[tuple[str, str, object]]:
    """(method, path, handler) of the routes packs added with ``PromptServer.instance.routes``
    (``@routes.get("/my_pack/info")``); the server adds them at their path and under /api, as
    ComfyUI does."""
    server = _loaded("server")
    if server is None:
        return []
    found = []
    for route in server.PromptServer.instance.routes:
        method, path, handler = getattr(route, "method", None), getattr(route, "path", None), \
            getattr(route, "handler", None)
        if method and path and handler:  # a static folder (routes.static) has no handler; not served
            found.append((method, path, handler))
    return found


# node name -> (class, display name) of every ComfyUI pack loaded in this process: ComfyUI's
# nodes.NODE_CLASS_MAPPINGS holds the packs' nodes beside the core ones, and packs look each
# other up there at run time (Inspire calls Impact's RegionalSampler, controlnet_aux's
# preprocessors); the tree's nodes module shows these in its mappings
PACK_NODES: dict[str, tuple[type, str]] = {}


def add_pack_nodes(entries: dict[str, tuple[type, str]]) -> None:
    """Show a loaded pack's classes in ``nodes.NODE_CLASS_MAPPINGS`` (under the names the
    registry gave them) and their display names in ``NODE_DISPLAY_NAME_MAPPINGS``; as in
    ComfyUI, a later pack's class of the same name wins there."""
    PACK_NODES.update(entries)


def extension_web_dirs() -> dict[str, str]:
    """What packs put in ComfyUI's ``nodes.EXTENSION_WEB_DIRS`` (empty until one imports it)."""
    nodes = _loaded("nodes")
    return dict(getattr(nodes, "EXTENSION_WEB_DIRS", None) or {}) if nodes is not None else {}


def on_prompt(body: dict) -> dict:
    """A /prompt request's JSON after the packs' ``add_on_prompt_handler`` handlers (unchanged
    when no pack added one)."""
    server = _loaded("server")
    return body if server is None else server.PromptServer.instance.trigger_on_prompt(body)


def provides(qualified: str) -> bool:
    """Whether the layer has ComfyUI's name ``qualified`` (``comfy.utils.ProgressBar``,
    ``server.PromptServer.instance.send_sync``): the longest module prefix the tree has, then
    each attribute. Probing records nothing as missing."""
    import importlib

    parts = qualified.split(".")
    if parts[0] not in TOP_LEVEL:
        return False
    install()
    with runtime.allow_imports(), runtime.loading(_PROBE):
        try:
            obj, i = None, len(parts)
            while i > 0:
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                    break
                except ModuleNotFoundError as exc:
                    if exc.name is None or not ".".join(parts[:i]).startswith(exc.name):
                        return False  # the module exists but imports something that does not
                    i -= 1
            if obj is None:
                return False
            for attr in parts[i:]:
                obj = getattr(obj, attr)
            return True
        except (AttributeError, ImportError):
            return False
        finally:
            runtime.forget(_PROBE)


_PROBE = "\0probe"
