"""ComfyUI's ``comfy_execution.graph_utils``: GraphBuilder and links, from latentgraph.graph.expansion."""

from latentgraph.comfy_compat import runtime
from latentgraph.graph.expansion import GraphBuilder, add_graph_prefix, is_link
from latentgraph.graph.expansion import GraphNode as Node

__all__ = ["GraphBuilder", "Node", "add_graph_prefix", "is_link"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)
