"""Where a pack's web extension lives: the folder ComfyUI's frontend loads its JavaScript from.

ComfyUI looks at two places, and so do we: the module's ``WEB_DIRECTORY`` attribute, relative
to the folder holding the module (the pack's folder for a package; the custom-nodes folder for a
single ``.py`` file), and, for a package, ``[tool.comfy] web`` in its ``pyproject.toml``. The
first one that names a folder wins. Unlike ComfyUI, a folder that leaves the pack's folder (an
absolute path elsewhere, ``..``, a symlink out) is refused, and every refusal is a note in the
pack's report rather than a silent skip.
"""

from __future__ import annotations

import os
import tomllib
import types
from pathlib import Path

MAX_PYPROJECT_BYTES = 1 << 20  # a pack's pyproject.toml is read only up to this size
NOT_SERVED = "its web extension is not served"


def web_folder(module: types.ModuleType | None, pack_path: Path | None, notes: list[str]) -> str | None:
    """The resolved folder to serve for a loaded pack, or None; a note for each candidate refused.

    ``pack_path`` is the pack's file or folder (custom-nodes packs); None for an entry point,
    whose module's own folder is the base."""
    if module is None:
        return None
    if pack_path is not None:
        base = pack_path if pack_path.is_dir() else pack_path.parent
    elif getattr(module, "__file__", None):
        base = Path(module.__file__).parent
    else:
        if getattr(module, "WEB_DIRECTORY", None) is not None:
            notes.append(f"{NOT_SERVED}: WEB_DIRECTORY is set but the module has no file to find it from")
        return None
    value = getattr(module, "WEB_DIRECTORY", None)
    if value is not None:
        folder = _checked(base, "WEB_DIRECTORY", value, notes)
        if folder is not None:
            return folder
    if pack_path is not None and pack_path.is_dir():  # read only when WEB_DIRECTORY gave nothing
        web = _pyproject_web(pack_path / "pyproject.toml", notes)
        if web is not None:
            return _checked(base, "pyproject.toml [tool.comfy] web", web, notes)
    return None


def _checked(base: Path, label: str, value, notes: list[str]) -> str | None:
    if not isinstance(value, (str, os.PathLike)):
        notes.append(f"{NOT_SERVED}: {label} must be a folder path (a string), not {type(value).__name__}")
        return None
    try:
        root = base.resolve()
        folder = (base / value).resolve()
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop
        notes.append(f"{NOT_SERVED}: {label} {os.fspath(value)!r} cannot be used ({exc})")
        return None
    if folder != root and root not in folder.parents:
        notes.append(f"{NOT_SERVED}: {label} {os.fspath(value)!r} leaves the pack's folder ({base})")
        return None
    if not folder.is_dir():
        notes.append(f"{NOT_SERVED}: {label} {os.fspath(value)!r} is not a folder ({base / value})")
        return None
    return str(folder)


def _pyproject_web(path: Path, notes: list[str]) -> str | None:
    """``[tool.comfy] web`` of a pack's pyproject.toml, if any (a broken file is a note)."""
    try:
        size = path.stat().st_size
    except OSError:
        return None  # no pyproject.toml: nothing to read
    if size > MAX_PYPROJECT_BYTES:
        notes.append(f"pyproject.toml not read: {size} bytes is over MAX_PYPROJECT_BYTES ({MAX_PYPROJECT_BYTES})")
        return None
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        notes.append(f"pyproject.toml not read: {exc}")
        return None
    comfy = data.get("tool", {}).get("comfy", {}) if isinstance(data.get("tool"), dict) else {}
    web = comfy.get("web") if isinstance(comfy, dict) else None
    return web or None  # ComfyUI ignores an empty value
