"""ComfyUI's ``comfy`` package as latentgraph's compatibility layer provides it (see
latentgraph/comfy_compat/__init__.py); its submodules are the files beside this one.

In a running ComfyUI every ``comfy`` submodule has been imported before packs load, so a pack
may ``import comfy`` and then read ``comfy.model_sampling`` (ComfyUI_essentials does): here the
submodule is imported when first read that way."""

import importlib
from pathlib import Path

from latentgraph.comfy_compat import runtime

_HERE = Path(__file__).resolve().parent


def __getattr__(name: str):
    if not name.startswith("_") and name.isidentifier() and (
            (_HERE / f"{name}.py").is_file() or (_HERE / name / "__init__.py").is_file()):
        return importlib.import_module(f"{__name__}.{name}")
    raise runtime.missing(__name__, name)
