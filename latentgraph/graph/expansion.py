"""What a node may hand back besides values: a graph to run in its place (node expansion), and
values that stop whoever uses them (execution blockers). ComfyUI's semantics, latentgraph's code.

**Expansion.** A node returns ``Expansion(graph, result)``: ``graph`` is API-format nodes
(``{id: {"class_type", "inputs"}}``, links as ``[node_id, output_index]``, which may point
into ``graph`` or at any node of the running workflow), ``result`` one entry per output, each
a constant or a link into the graph. The executor adds the nodes, runs what the result and
the graph's output nodes need, and the expanding node's outputs become the linked values.
Expanded nodes are cached by their inputs like any other node, so an unchanged expansion
costs nothing the second time. ComfyUI nodes return ``{"expand": graph, "result": (...)}``.

**GraphBuilder** makes such graphs with ids that do not collide: each builder's ids start
with a prefix made of the expanding node's id, the index of the call (a node called per item
of a list input is called several times) and a counter, as ComfyUI's does, so the ids are
deterministic from run to run.

**Blocker.** An output value that stops every node it reaches: a node given a Blocker for
any input is not called, and all its outputs are that Blocker. A message is reported once,
as an error event of the node it reached first, without failing the run; a Blocker without a
message blocks silently. (ComfyUI's ``ExecutionBlocker``.)
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any


def is_link(value: Any) -> bool:
    """``[node_id, output_index]``, the API format's link (a number as the index, as ComfyUI)."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


@dataclass
class Expansion:
    """A node's answer "run this graph; my outputs are these values/links"."""

    graph: dict
    result: tuple = ()
    ui: dict | None = None


class Blocker:
    """A value that blocks the nodes that take it (see the module's docstring)."""

    def __init__(self, message: str | None = None):
        self.message = message

    def __repr__(self) -> str:
        return f"Blocker({self.message!r})"


# -- ids for expanded nodes ------------------------------------------------------------------
# The executor says which node and call is running; builders made during the call take their
# prefixes from it. A context variable, so that concurrent runs in threads do not mix.
_CALL: contextvars.ContextVar[list | None] = contextvars.ContextVar("latentgraph_expansion_call", default=None)


def set_call(node_id: str, call_index: int) -> contextvars.Token:
    """Before the executor calls a node (once per list item): builders made now get the
    prefixes ``{node_id}.{call_index}.0.``, ``{node_id}.{call_index}.1.``, ..."""
    return _CALL.set([str(node_id), int(call_index), 0])


def reset_call(token: contextvars.Token) -> None:
    _CALL.reset(token)


def next_prefix(root: str | None = None, call_index: int | None = None, graph_index: int | None = None) -> str:
    """The next prefix of the running call: ``root.call.graph.`` with the graph counter moved on."""
    state = _CALL.get()
    if state is None:  # outside a node call (a builder made by a script or a test)
        state = ["", 0, 0]
        _CALL.set(state)
    root = state[0] if root is None else root
    call_index = state[1] if call_index is None else call_index
    graph_index = state[2] if graph_index is None else graph_index
    state[2] += 1
    return f"{root}.{call_index}.{graph_index}."


class GraphNode:
    """One node of a GraphBuilder: ``.out(i)`` is a link to its output ``i``."""

    def __init__(self, node_id: str, class_type: str, inputs: dict):
        self.id, self.class_type, self.inputs = node_id, class_type, inputs
        self.override_display_id: str | None = None

    def out(self, index: int) -> list:
        return [self.id, index]

    def set_input(self, name: str, value: Any) -> None:
        """Set an input; None removes it."""
        if value is None:
            self.inputs.pop(name, None)
        else:
            self.inputs[name] = value

    def get_input(self, name: str) -> Any:
        return self.inputs.get(name)

    def set_override_display_id(self, display_id: str | None) -> None:
        self.override_display_id = display_id

    def serialize(self) -> dict:
        data = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            data["override_display_id"] = self.override_display_id
        return data


class GraphBuilder:
    """Builds an expansion graph: ``node(class_type, **inputs)`` adds a node (ids are the
    builder's prefix plus a counter, or the ``id`` given), ``finalize()`` is the graph."""

    def __init__(self, prefix: str | None = None):
        self.prefix = next_prefix() if prefix is None else prefix
        self.nodes: dict[str, GraphNode] = {}
        self._counter = 1

    @classmethod
    def set_default_prefix(cls, prefix_root: str, call_index: int, graph_index: int = 0) -> None:
        _CALL.set([str(prefix_root), int(call_index), int(graph_index)])

    @classmethod
    def alloc_prefix(cls, root: str | None = None, call_index: int | None = None,
                     graph_index: int | None = None) -> str:
        return next_prefix(root, call_index, graph_index)

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> GraphNode:  # noqa: A002 - ComfyUI's name
        if id is None:
            id = str(self._counter)
            self._counter += 1
        full = self.prefix + str(id)
        if full not in self.nodes:  # asking again for an id gives the node made first
            self.nodes[full] = GraphNode(full, class_type, inputs)
        return self.nodes[full]

    def lookup_node(self, id: str) -> GraphNode | None:  # noqa: A002
        return self.nodes.get(self.prefix + str(id))

    def remove_node(self, id: str) -> None:  # noqa: A002
        del self.nodes[self.prefix + str(id)]

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Point every input linked to output ``index`` of ``node_id`` at ``new_value``
        (None: remove those inputs)."""
        old = [self.prefix + str(node_id), index]
        for node in self.nodes.values():
            for name, value in list(node.inputs.items()):
                if is_link(value) and value[0] == old[0] and value[1] == index:
                    node.set_input(name, new_value)

    def finalize(self) -> dict:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}


def add_graph_prefix(graph: dict, outputs: tuple | list, prefix: str) -> tuple[dict, tuple]:
    """``graph`` and ``outputs`` with ``prefix`` put before every node id and every link, as
    ComfyUI's helper of that name does (so a graph whose links leave it must not use it)."""
    new_graph = {}
    for node_id, info in graph.items():
        inputs = {name: [prefix + value[0], value[1]] if is_link(value) else value
                  for name, value in (info.get("inputs") or {}).items()}
        new_graph[prefix + node_id] = {"class_type": info["class_type"], "inputs": inputs}
    new_outputs = tuple([prefix + out[0], out[1]] if is_link(out) else out for out in outputs)
    return new_graph, new_outputs
