"""NodeRegistry: the node types a front door knows. An object, never a module global:
built-ins and plugins register into the registry they are handed."""

from __future__ import annotations

import difflib
import inspect
import types
from typing import Callable, Iterator

from .declare import NodeDef, build_node_def, declaration_of
from .errors import DeclarationError


class NodeRegistry:
    """Node definitions by class_type. Names may be added, never replaced."""

    def __init__(self):
        self._defs: dict[str, NodeDef] = {}
        self.plugins: list = []  # latentgraph.plugins.PluginInfo of every pack loaded into it
        self.ambiguous: dict[str, list[str]] = {}  # a name several packs define -> their 'pack/Name's

    def register(self, fn_or_def: Callable | NodeDef, *, python_module: str | None = None,
                 source: str = "builtin") -> NodeDef:
        """Check a declared function and add it. Raises DeclarationError on any mismatch or
        when the name is taken."""
        ndef = fn_or_def if isinstance(fn_or_def, NodeDef) else build_node_def(
            fn_or_def, python_module=python_module, source=source)
        if ndef.name in self._defs:
            other = self._defs[ndef.name]
            raise DeclarationError(
                f"node name '{ndef.name}' is already registered (by {other.source}, "
                f"{other.python_module}); {source} cannot replace it"
            )
        self._defs[ndef.name] = ndef
        return ndef

    def register_module(self, module: types.ModuleType, *, python_module: str | None = None,
                        source: str = "builtin") -> list[NodeDef]:
        """Register every @node function defined in ``module``, in source order."""
        found = [
            obj for _, obj in inspect.getmembers(module, inspect.isfunction)
            if declaration_of(obj) is not None and obj.__module__ == module.__name__
        ]
        found.sort(key=lambda f: f.__code__.co_firstlineno)
        return [self.register(f, python_module=python_module, source=source) for f in found]

    def get(self, name: str) -> NodeDef | None:
        return self._defs.get(name)

    def __getitem__(self, name: str) -> NodeDef:
        return self._defs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._defs

    def __iter__(self) -> Iterator[str]:
        return iter(self._defs)

    def __len__(self) -> int:
        return len(self._defs)

    def names(self) -> list[str]:
        return list(self._defs)

    def missing_hint(self, name: str) -> str:
        """Why ``name`` is not a node here, and what to use instead."""
        if self.ambiguous.get(name):
            return "it is defined by several plugins; use one of " + ", ".join(f"'{n}'" for n in self.ambiguous[name])
        failed = [p for p in self.plugins if p.status != "loaded"]
        hint = self.suggest(name)
        if hint:
            return f"did you mean '{hint}'?"
        if failed:
            return ("is a plugin that provides it not installed? (plugins that did not load: "
                    + ", ".join(f"{p.name} ({p.status})" for p in failed) + ")")
        return "is a plugin that provides it not installed?"

    def suggest(self, name: str) -> str | None:
        """The closest registered name, for "did you mean" hints."""
        hits = difflib.get_close_matches(name, self._defs, n=1, cutoff=0.75)
        if not hits:
            lowered = {n.lower(): n for n in self._defs}
            hit = lowered.get(name.lower())
            return hit
        return hits[0]

    def object_info(self, env=None) -> dict:
        """Every node in ComfyUI's ``/object_info`` shape (combo choices listed for ``env``)."""
        return {name: d.object_info(env) for name, d in self._defs.items()}
