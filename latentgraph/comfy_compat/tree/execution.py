"""ComfyUI's ``execution`` module: packs import it (rgthree does at load) but latentgraph's
executor is its own, so only what has a meaning here is provided; the rest (PromptExecutor,
validate_prompt) is reported as missing when a pack reaches for it."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def full_type_name(klass) -> str:
    """``module.QualName`` of a class, without ``builtins.`` (as ComfyUI writes error types)."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


class PromptExecutor:
    """ComfyUI's executor class, for reference only: packs read its methods at import (Impact
    keeps ``PromptExecutor.handle_execution_error``) to wrap them; latentgraph's executor is
    its own, so making one or calling its methods names them as missing."""

    def __init__(self, *args, **kwargs):
        raise runtime.missing(__name__, "PromptExecutor")

    def handle_execution_error(self, *args, **kwargs):
        raise runtime.missing(__name__, "PromptExecutor.handle_execution_error")

    def execute(self, *args, **kwargs):
        raise runtime.missing(__name__, "PromptExecutor.execute")
