"""Deferred imports, so that declaring nodes costs no heavy import.

    torch = lazy("torch")
    F = lazy("torch.nn.functional")
    TextModel = lazy("..models.clip", "TextModel")

A node module binds heavy names this way instead of ``import torch`` / ``from ... import``.
Its declarations (signatures, specs, defaults) then build without importing torch, so
``latentgraph nodes``, ``validate`` and ``convert`` stay fast; the module is imported the first
time the name is *used* (an attribute read, a call, ``isinstance``, indexing), and from then on
the module's global is the real object (the proxy rebinds itself in the module that made it),
as Python 3.15's ``lazy from ... import`` will do.

What a proxy cannot stand for: an exception class in ``except`` (import those eagerly; they live
in cheap modules), a value handed as it is to C code or compared by identity before first use
(``dtype=`` arguments, ``x is SENTINEL``), a ``match`` class pattern. Plain data (name lists for
combos) is imported eagerly from modules that do not import torch (nodes/choices.py).
Annotations are fine: typing probes ``__dunder__`` attributes, which a proxy answers with
AttributeError before it is resolved, without importing anything.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import typing
from typing import Any

_UNSET: Any = object()


class Lazy:
    """A stand-in for ``module`` (or ``module.attr``) that imports it on first use."""

    __slots__ = ("_lz_module", "_lz_attr", "_lz_globals", "_lz_value")

    def __init__(self, module: str, attr: str | None, globals_: dict | None):
        object.__setattr__(self, "_lz_module", module)
        object.__setattr__(self, "_lz_attr", attr)
        object.__setattr__(self, "_lz_globals", globals_)
        object.__setattr__(self, "_lz_value", _UNSET)

    def _lz_resolve(self) -> Any:
        value = object.__getattribute__(self, "_lz_value")
        if value is not _UNSET:
            return value
        module = object.__getattribute__(self, "_lz_module")
        attr = object.__getattribute__(self, "_lz_attr")
        value = importlib.import_module(module)
        if attr is not None:
            try:
                value = getattr(value, attr)
            except AttributeError:
                raise ImportError(f"cannot import name {attr!r} from {module!r} (a lazy import)") from None
        object.__setattr__(self, "_lz_value", value)
        scope = object.__getattribute__(self, "_lz_globals")
        if scope is not None:  # rebind the module's name(s): later uses skip the proxy
            for name, bound in list(scope.items()):
                if bound is self:
                    scope[name] = value
        return value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name != "__version__" \
                and object.__getattribute__(self, "_lz_value") is _UNSET:
            # typing, inspect and copy probe dunders (__typing_subst__, __wrapped__, ...): an
            # annotation must not import torch
            raise AttributeError(name)
        return getattr(self._lz_resolve(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._lz_resolve(), name, value)

    def __call__(self, *args, **kwargs):
        return self._lz_resolve()(*args, **kwargs)

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self._lz_resolve())

    def __subclasscheck__(self, cls: Any) -> bool:
        return issubclass(cls, self._lz_resolve())

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (self._lz_resolve(),)

    def __or__(self, other: Any) -> Any:  # ``Tensor | None`` in an annotation stays unresolved
        if is_resolved(self):
            return self._lz_resolve() | other
        return typing.Union[self, other]

    def __ror__(self, other: Any) -> Any:
        if is_resolved(self):
            return other | self._lz_resolve()
        return typing.Union[other, self]

    def __getitem__(self, key: Any) -> Any:
        return self._lz_resolve()[key]

    def __contains__(self, item: Any) -> bool:
        return item in self._lz_resolve()

    def __iter__(self):
        return iter(self._lz_resolve())

    def __len__(self) -> int:
        return len(self._lz_resolve())

    # copied or pickled (a proxy kept inside a value), it is the real object: what
    # ``from module import attr`` would have bound
    def __reduce_ex__(self, protocol: int):
        return _import, (object.__getattribute__(self, "_lz_module"), object.__getattribute__(self, "_lz_attr"))

    def __copy__(self) -> Any:
        return self._lz_resolve()

    def __deepcopy__(self, memo: dict) -> Any:
        return copy.deepcopy(self._lz_resolve(), memo)

    def __repr__(self) -> str:
        value = object.__getattribute__(self, "_lz_value")
        if value is not _UNSET:
            return repr(value)
        attr = object.__getattribute__(self, "_lz_attr")
        return f"<lazy {object.__getattribute__(self, '_lz_module')}{'.' + attr if attr else ''}>"


def _import(module: str, attr: str | None) -> Any:
    value = importlib.import_module(module)
    return getattr(value, attr) if attr is not None else value


def lazy(module: str, attr: str | None = None) -> Any:
    """A proxy for ``module`` (``import module``) or for ``module.attr`` (``from module import
    attr``), imported on first use. ``module`` may be relative to the calling module."""
    caller = sys._getframe(1).f_globals
    if module.startswith("."):
        module = importlib.util.resolve_name(module, caller.get("__package__"))
    return Lazy(module, attr, caller)


def unwrap(obj: Any) -> Any:
    """The real object behind a proxy (imported now if need be); anything else as it is. For a
    proxy stored inside a container, where first use cannot rebind it."""
    return obj._lz_resolve() if type(obj) is Lazy else obj


def is_resolved(obj: Any) -> bool:
    """Whether a proxy's module has been imported (True for anything that is not a proxy)."""
    return type(obj) is not Lazy or object.__getattribute__(obj, "_lz_value") is not _UNSET
