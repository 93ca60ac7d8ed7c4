"""Record the method name and parameter order of ComfyUI's own V1 node classes (``FUNCTION``
and the ``def`` it names), read with :mod:`ast` from a ComfyUI checkout: nothing of it is
imported or copied. Packs call core nodes by those names and often positionally
(``nodes.VAEEncode().encode(vae, pixels)``), so the compatibility layer's ``nodes`` classes
need them. Writes ``latentgraph/comfy_compat/tree/node_methods.json``.

Nodes ComfyUI has since converted to its V3 API (``execute`` classmethods) are taken from an
older checkout given with ``--older`` (0.3.39, before the conversions), since packs written
against those versions still call the V1 names (``ImageUpscaleWithModel().upscale(...)``);
such entries are marked ``"read_from"`` with the older version.

    python tools/comfy_node_methods.py /path/to/ComfyUI [--older /path/to/ComfyUI-0.3.39]
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "latentgraph" / "comfy_compat" / "tree" / "node_methods.json"


def _mappings(tree: ast.Module) -> dict[str, str]:
    """NODE_CLASS_MAPPINGS literal entries: node name -> class name."""
    found = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "NODE_CLASS_MAPPINGS"
                                                for t in stmt.targets) and isinstance(stmt.value, ast.Dict):
            for key, value in zip(stmt.value.keys, stmt.value.values):
                if isinstance(key, ast.Constant) and isinstance(value, ast.Name):
                    found[key.value] = value.id
    return found


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {c.name: c for c in tree.body if isinstance(c, ast.ClassDef)}


def _method(classes: dict[str, ast.ClassDef], name: str) -> tuple[str, list[str]] | None:
    """(FUNCTION, its parameter names) of class ``name``, following simple base classes."""
    cls = classes.get(name)
    function = None
    seen = set()
    while cls is not None and cls.name not in seen:
        seen.add(cls.name)
        for stmt in cls.body:
            if function is None and isinstance(stmt, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "FUNCTION" for t in stmt.targets) \
                    and isinstance(stmt.value, ast.Constant):
                function = stmt.value.value
        for stmt in cls.body:
            if function and isinstance(stmt, ast.FunctionDef) and stmt.name == function:
                args = [a.arg for a in stmt.args.args[1:] + stmt.args.kwonlyargs]
                return function, args
        bases = [b.id for b in cls.bases if isinstance(b, ast.Name)]
        cls = classes.get(bases[0]) if bases else None
    return None


def read_methods(root: Path) -> tuple[str, dict]:
    """(ComfyUI's version, node name -> {function, params}) of the V1 classes under ``root``."""
    files = [root / "nodes.py"] + sorted((root / "comfy_extras").glob("nodes_*.py"))
    table = {}
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = _classes(tree)
        for node, cls in _mappings(tree).items():
            found = _method(classes, cls)
            if found is not None:
                table[node] = {"function": found[0], "params": found[1]}
    version = (root / "comfyui_version.py").read_text().split('__version__ = "')[1].split('"')[0]
    return version, table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--older", type=Path, help="an older ComfyUI whose V1 methods fill in converted nodes")
    args = parser.parse_args(argv)
    version, table = read_methods(args.comfyui)
    doc = {"comfyui": version}
    if args.older is not None:
        old_version, old = read_methods(args.older)
        doc["older"] = old_version
        for node, entry in old.items():
            if node not in table:
                table[node] = dict(entry, read_from=old_version)
    doc["nodes"] = dict(sorted(table.items()))
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{len(table)} node classes of ComfyUI {version} -> {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
