"""The state ComfyUI keeps in module globals, held in one place: the Environment packs see
(folder_paths), the node running now (progress bars, interrupts), the server packs talk to
(PromptServer.instance), and the names packs asked for that the tree lacks.

latentgraph passes these objects around; ComfyUI's API reaches them through globals. The
front door binds them here (:func:`bind`); the adapters set the running node around each call
(:func:`node_call`). Nothing in latentgraph reads this module except the tree.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
from typing import Any, Iterator

_state: dict[str, Any] = {"env": None, "server": None}
_lock = threading.Lock()
_node: contextvars.ContextVar = contextvars.ContextVar("comfy_compat_node", default=None)
_pack: contextvars.ContextVar = contextvars.ContextVar("comfy_compat_pack", default=None)
_allow: contextvars.ContextVar = contextvars.ContextVar("comfy_compat_allow", default=False)
_missing: dict[str, set[str]] = {}  # pack -> "module.name" it asked for and did not get


def bind(env=None, server=None) -> None:
    """Set what packs see: the Environment (folders, device) and the server (``None`` keeps
    the one bound before)."""
    with _lock:
        if env is not None:
            _state["env"] = env
        if server is not None:
            _state["server"] = server


def current_env():
    """The running node's Environment, else the bound one, else a default Environment (the
    current folder's models/, input/, output/), as ComfyUI's folder_paths has defaults."""
    ctx = _node.get()
    if ctx is not None and getattr(ctx, "env", None) is not None:
        return ctx.env
    if _state["env"] is None:
        from ..graph.env import Environment

        bind(env=Environment())
    return _state["env"]


def current_server():
    return _state["server"]


def current_node():
    """The NodeContext of the node running in this thread, or None."""
    return _node.get()


@contextlib.contextmanager
def node_call(ctx) -> Iterator[None]:
    """Around a pack node's call: ComfyUI's module functions find the running node here."""
    token = _node.set(ctx)
    try:
        yield
    finally:
        _node.reset(token)


@contextlib.contextmanager
def loading(pack: str) -> Iterator[None]:
    """Around a pack's import: missing names it asks for are recorded under its name."""
    token = _pack.set(pack)
    try:
        yield
    finally:
        _pack.reset(token)


@contextlib.contextmanager
def allow_imports() -> Iterator[None]:
    token = _allow.set(True)
    try:
        yield
    finally:
        _allow.reset(token)


def allowed() -> bool:
    return _allow.get()


def missing(module: str, name: str) -> AttributeError:
    """Record that the loading pack (or the running node's pack) asked for ``module.name``,
    which the tree lacks; the AttributeError to raise, naming it. Dunder names (``__path__``,
    ``__wrapped__``: the import system and inspect probe them) are never recorded."""
    if name.startswith("__") and name.endswith("__"):
        return AttributeError(f"module '{module}' has no attribute '{name}'")
    _record(f"{module}.{name}")
    return AttributeError(f"module '{module}' has no attribute '{name}' (latentgraph's ComfyUI compatibility "
                          f"layer does not provide it)")


def missing_module(fullname: str) -> ModuleNotFoundError:
    """Record that the loading pack imported ``fullname``, a ComfyUI module the tree lacks; the
    ModuleNotFoundError to raise, naming it."""
    _record(fullname)
    return ModuleNotFoundError(f"No module named '{fullname}' (latentgraph's ComfyUI compatibility layer does "
                               f"not provide it)", name=fullname)


def _record(qualified: str) -> None:
    pack = _pack.get()
    if pack is None:
        ctx = _node.get()
        pack = getattr(ctx, "class_type", None) and f"node {ctx.class_type}"
    with _lock:
        _missing.setdefault(pack or "?", set()).add(qualified)


def missing_names(pack: str) -> list[str]:
    """What ``pack`` asked for and did not get, less the names it then set itself (VHS probes
    ``hasattr(nodes, "VHSLoadFormats")`` and sets it when absent, as on ComfyUI)."""
    with _lock:
        asked = sorted(_missing.get(pack, ()))
    return [name for name in asked if not _set_later(name)]


def _set_later(qualified: str) -> bool:
    module, _, attr = qualified.rpartition(".")
    found = sys.modules.get(module)
    return found is not None and attr in vars(found)


def forget(pack: str) -> None:
    with _lock:
        _missing.pop(pack, None)
