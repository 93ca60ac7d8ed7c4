"""ComfyUI's ``comfy_execution.graph_utils``: GraphBuilder and links, from latentgraph.graph.expansion."""

from latentgraph.comfy_compat import runtime
from latentgraph.graph.expansion import GraphBuilder, add_graph_prefix
from latentgraph.graph.expansion import GraphNode as Node

__all__ = ["GraphBuilder", "Node", "add_graph_prefix", "is_link"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def is_link(obj) -> bool:
    """ComfyUI's test: a 2-list of a string and a number, where a bool counts as a number
    (latentgraph's own reading of prompts does not take ``["a", True]`` for a link)."""
    return isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], (int, float))
