"""The Workflow model: node id -> (class_type, inputs), exactly ComfyUI's API format, where
an input is a constant or a Link. Loaded from API JSON or YAML (see loaders.py), edited in
Python, written back as either."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import Problem, WorkflowError


@dataclass(frozen=True)
class Link:
    """A link to output ``output`` of node ``node``. ``output`` is an index, an output name
    (resolved against the registry), or None for "the node's only output"."""

    node: str
    output: int | str | None = None

    def __repr__(self) -> str:
        return f"Link({self.node!r}, {self.output!r})"


@dataclass
class NodeSpec:
    """One node of a workflow. ``meta`` keeps the rest of API ``_meta`` besides the title."""

    class_type: str
    inputs: dict[str, Any] = field(default_factory=dict)
    title: str | None = None
    meta: dict = field(default_factory=dict)


class NodeRef:
    """Handle returned by ``Workflow.add``: ``ref.CLIP``, ``ref[1]`` or ``ref.out("CLIP")``
    make Links to its outputs; a bare ``ref`` used as an input means its only output."""

    __slots__ = ("node_id",)

    def __init__(self, node_id: str):
        self.node_id = node_id

    def out(self, output: int | str | None = None) -> Link:
        return Link(self.node_id, output)

    def __getattr__(self, name: str) -> Link:
        if name.startswith("__"):
            raise AttributeError(name)
        return Link(self.node_id, name)

    def __getitem__(self, index: int | str) -> Link:
        return Link(self.node_id, index)

    def __repr__(self) -> str:
        return f"NodeRef({self.node_id!r})"


def link_from_text(text: str, node_ids) -> Link | None:
    """Read YAML's friendly link: ``node``, ``node.OUTPUT`` or ``node.0``. None when the
    text names no node of the workflow."""
    if text in node_ids:
        return Link(text, None)
    head, dot, tail = text.rpartition(".")
    if dot and head in node_ids and tail:
        return Link(head, int(tail) if tail.isdigit() else tail)
    return None


def api_link(value: Any) -> Link | None:
    """Read an API-format link ``["id", index]``; None when ``value`` is not well formed."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        node, index = value
        if isinstance(node, (str, int)) and not isinstance(node, bool) and \
                isinstance(index, int) and not isinstance(index, bool) and index >= 0:
            return Link(str(node), index)
    return None


class Workflow:
    """An ordered mapping node id -> NodeSpec, with the file it came from (for messages)."""

    def __init__(self, nodes: dict[str, NodeSpec] | None = None, source: str | None = None,
                 description: str | None = None):
        self.nodes: dict[str, NodeSpec] = dict(nodes or {})
        self.source = source
        self.description = description
        self.extra: dict = {}  # extra_data of a /prompt request (extra_pnginfo, ...)
        self.origin: str = "python"  # "yaml", "api", "ui", "png" or "python": how it was made

    # -- loading (the parsers live in loaders.py) ------------------------------------------
    @classmethod
    def load(cls, path: str | Path, registry=None) -> "Workflow":
        """Read a workflow file: YAML, API JSON, ComfyUI UI JSON, or a PNG carrying a ``prompt``
        or ``workflow`` chunk, told apart by content. UI-format files need the ``registry``
        (widget values are matched to inputs by its declarations)."""
        from .loaders import load_file

        return load_file(path, registry)

    @classmethod
    def loads(cls, text: str, source: str = "<string>") -> "Workflow":
        from .loaders import load_text

        return load_text(text, source)

    @classmethod
    def from_api(cls, data: Any, source: str = "<prompt>") -> "Workflow":
        from .loaders import workflow_from_api

        return workflow_from_api(data, source)

    # -- access and editing ----------------------------------------------------------------
    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: str) -> NodeSpec:
        return self.nodes[node_id]

    def add(self, node_id: str, class_type: str, *, title: str | None = None, **inputs: Any) -> NodeRef:
        """Add a node; inputs are constants, Links, or NodeRefs (meaning the only output)."""
        node_id = str(node_id)
        if node_id in self.nodes:
            raise WorkflowError(self.source, [Problem("a node with this id already exists", node=node_id)])
        self.nodes[node_id] = NodeSpec(class_type, {k: _unref(v) for k, v in inputs.items()}, title)
        return NodeRef(node_id)

    def remove(self, node_id: str) -> None:
        self._node(node_id)
        del self.nodes[node_id]

    def set(self, path: str, value: Any) -> None:
        """Set input ``node.input`` (e.g. ``"sampler.seed"``) to a constant or a link."""
        node_id, name = self._split(path)
        self._node(node_id).inputs[name] = _unref(value)

    def get(self, path: str) -> Any:
        node_id, name = self._split(path)
        inputs = self._node(node_id).inputs
        if name not in inputs:
            raise WorkflowError(self.source, [Problem("input is not set", node=node_id, input=name)])
        return inputs[name]

    def copy(self) -> "Workflow":
        twin = Workflow(copy.deepcopy(self.nodes), self.source, self.description)
        twin.extra = copy.deepcopy(self.extra)
        twin.origin = self.origin
        return twin

    def _split(self, path: str) -> tuple[str, str]:
        node_id, dot, name = str(path).rpartition(".")
        if not dot or not node_id or not name:
            raise WorkflowError(self.source, f"'{path}' is not of the form NODE.INPUT")
        return node_id, name

    def _node(self, node_id: str) -> NodeSpec:
        if node_id not in self.nodes:
            known = ", ".join(list(self.nodes)[:20])
            raise WorkflowError(self.source, [Problem(f"no such node (nodes are: {known})", node=node_id)])
        return self.nodes[node_id]

    # -- writing ---------------------------------------------------------------------------
    def to_api(self, registry=None) -> dict:
        """ComfyUI's API format. Links by name (YAML) need ``registry`` to become indices."""
        from .loaders import workflow_to_api

        return workflow_to_api(self, registry)

    def to_yaml(self, registry=None) -> str:
        """YAML for people; with ``registry``, links name outputs instead of indices."""
        from .loaders import workflow_to_yaml

        return workflow_to_yaml(self, registry)

    def __repr__(self) -> str:
        return f"Workflow({len(self.nodes)} nodes, source={self.source!r})"


def _unref(value: Any) -> Any:
    """NodeRef -> Link to its only output; an API list ``["id", 0]`` -> Link."""
    if isinstance(value, NodeRef):
        return Link(value.node_id, None)
    if isinstance(value, list):
        return api_link(value) or value
    return value
