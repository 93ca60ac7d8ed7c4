"""ComfyUI's ``comfy_execution.graph``: ExecutionBlocker (latentgraph.graph.expansion.Blocker)."""

from latentgraph.comfy_compat import runtime
from latentgraph.graph.errors import ExpansionError
from latentgraph.graph.expansion import Blocker as ExecutionBlocker

DependencyCycleError = ExpansionError
NodeInputError = ExpansionError
NodeNotFoundError = ExpansionError

__all__ = ["ExecutionBlocker", "DependencyCycleError", "NodeInputError", "NodeNotFoundError"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
