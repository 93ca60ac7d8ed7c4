"""The Workflow model: node id -> (class_type, inputs), exactly ComfyUI's API format, where
an input is a constant or a Link; and its conversions from and to API JSON, YAML for people and
(on load) ComfyUI's UI format.

Files are read by loaders.py, which returns plain checked data; this module builds the model
from it. The dependency is one way: workflow.py imports loaders.py, never the reverse.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import budgets
from .errors import Problem, WorkflowError
from .loaders import Document, dump_yaml, kind_name, parse_text, read_file, yaml_node_lines
from .ui_format import is_ui_workflow, ui_to_api

YAML_NODE_KEYS = ("type", "title", "meta", "inputs")
YAML_TOP_KEYS = ("nodes", "version", "description")
FORMAT_VERSION = 1


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
        return Link(head, int(tail) if _is_index(tail) else tail)
    return None


def _is_index(text: str) -> bool:
    """ASCII digits of a plausible output index ('²' is a digit to Python, and int() of 5000
    digits raises)."""
    return text.isascii() and text.isdigit() and len(text) <= 6


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

    # -- loading (the files are read by loaders.py) -----------------------------------------
    @classmethod
    def load(cls, path: str | Path, registry=None) -> "Workflow":
        """Read a workflow file: YAML, API JSON, ComfyUI UI JSON, or a PNG carrying a ``prompt``
        or ``workflow`` chunk, told apart by content. UI-format files need the ``registry``
        (widget values are matched to inputs by its declarations)."""
        return from_document(read_file(path), registry)

    @classmethod
    def loads(cls, text: str, source: str = "<string>", registry=None) -> "Workflow":
        return from_document(parse_text(text, source), registry)

    @classmethod
    def from_api(cls, data: Any, source: str = "<prompt>") -> "Workflow":
        """ComfyUI API format as Python data (a /prompt request's ``prompt``), held to the
        node-count and nesting budgets as a file is."""
        budgets.check_depth(data, source, "the prompt's nesting of lists and objects")
        return _from_api(data, source)

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
        return _to_api(self, registry)

    def to_yaml(self, registry=None) -> str:
        """YAML for people; with ``registry``, links name outputs instead of indices."""
        return _to_yaml(self, registry)

    def __repr__(self) -> str:
        return f"Workflow({len(self.nodes)} nodes, source={self.source!r})"


# -- building the model from a file's data -------------------------------------------------
def from_document(doc: Document, registry=None) -> Workflow:
    """The Workflow of a file read by loaders.py."""
    if doc.kind == "text":
        return _from_data(doc.data, doc.source, doc.text, doc.is_json, registry)
    if doc.kind == "png_prompt":
        wf = _from_api(doc.data, doc.source)
    else:
        wf = _from_ui(doc.data, doc.source, registry)
    wf.origin = "png"
    # the PNG's other JSON chunks (ComfyUI's extra_pnginfo: 'workflow', ...) go with it, so that
    # the images it saves carry the same metadata as the picture it came from
    if doc.pnginfo:
        wf.extra = {"extra_pnginfo": doc.pnginfo}
    return wf


def _from_data(data: Any, source: str, text: str | None, is_json: bool, registry) -> Workflow:
    if isinstance(data, dict):
        if is_ui_workflow(data):
            return _from_ui(data, source, registry)
        nodes = data.get("nodes")
        if "nodes" in data and not (isinstance(nodes, dict) and "class_type" in nodes):
            return _from_yaml(data, source, text)
        prompt = data.get("prompt")
        if isinstance(prompt, dict) and "class_type" not in prompt:  # a /prompt request body
            wf = _from_api(prompt, source)
            if isinstance(data.get("extra_data"), dict):
                wf.extra = data["extra_data"]
            return wf
        if data and (is_json or all(isinstance(v, dict) for v in data.values())):
            return _from_api(data, source)
        if not data:
            raise WorkflowError(source, "the workflow has no nodes")
    kind = kind_name(data) if not isinstance(data, dict) else "mapping without 'nodes'"
    raise WorkflowError(
        source,
        f"expected a workflow: a YAML mapping with a 'nodes' key, or API JSON "
        f"{{\"id\": {{\"class_type\": ..., \"inputs\": {{...}}}}}}; got a {kind}",
    )


def _from_ui(data: dict, source: str, registry) -> Workflow:
    """A ComfyUI UI-format workflow, converted as ComfyUI's frontend converts it."""
    if registry is None:
        raise WorkflowError(source, "this is a ComfyUI UI-format workflow (nodes/links); converting it needs the "
                                    "node registry (Workflow.load(path, registry=...))")
    wf = _from_api(ui_to_api(data, registry, source), source)
    wf.origin = "ui"
    wf.extra = {"extra_pnginfo": {"workflow": data}}
    return wf


def _from_api(data: Any, source: str) -> Workflow:
    """ComfyUI API format: ``{"id": {"class_type", "inputs", "_meta"}}``."""
    if not isinstance(data, dict):
        raise WorkflowError(source, f"expected a JSON object mapping node ids to nodes, got {type(data).__name__}")
    budgets.check("nodes", len(data), source, "the workflow's node count")
    problems: list[Problem] = []
    nodes: dict[str, NodeSpec] = {}
    for raw_id, entry in data.items():
        node_id = str(raw_id)
        if not isinstance(entry, dict):
            problems.append(Problem(f"expected an object with class_type and inputs, got {kind_name(entry)}", node=node_id))
            continue
        class_type = entry.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(Problem("missing 'class_type' (the node's type name)", node=node_id))
            continue
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            problems.append(Problem(f"'inputs' must be an object, got {kind_name(inputs)}", node=node_id))
            continue
        meta = entry.get("_meta", {})
        if not isinstance(meta, dict):
            problems.append(Problem(f"'_meta' must be an object, got {kind_name(meta)}", node=node_id))
            continue
        meta = dict(meta)
        title = meta.pop("title", None)
        values = {str(k): (api_link(v) or v) for k, v in inputs.items()}
        nodes[node_id] = NodeSpec(class_type, values, title if isinstance(title, str) else None, meta)
    if problems:
        raise WorkflowError(source, problems)
    if not nodes:
        raise WorkflowError(source, "the workflow has no nodes")
    wf = Workflow(nodes, source)
    wf.origin = "api"
    return wf


def _from_yaml(data: dict, source: str, text: str | None = None) -> Workflow:
    """YAML for people (see the README's "Workflow files"):

        nodes:
          ckpt: {type: CheckpointLoaderSimple, ckpt_name: demo.safetensors}
          pos:  {type: CLIPTextEncode, clip: ckpt.CLIP, text: "a red circle"}
    """
    problems: list[Problem] = []
    lines = yaml_node_lines(text) if text else {}
    unknown = [k for k in data if k not in YAML_TOP_KEYS]
    if unknown:
        problems.append(Problem(f"unknown top-level keys {unknown}; allowed: {list(YAML_TOP_KEYS)}"))
    version = data.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION:
        problems.append(Problem(f"format version {version!r} is not supported (this latentgraph reads {FORMAT_VERSION})"))
    description = data.get("description")
    if description is not None and not isinstance(description, str):
        problems.append(Problem("'description' must be a string"))
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, dict):
        problems.append(Problem(f"'nodes' must be a mapping of node id to node, got {kind_name(raw_nodes)}"))
        raise WorkflowError(source, problems)
    budgets.check("nodes", len(raw_nodes), source, "the workflow's node count")
    nodes: dict[str, NodeSpec] = {}
    for raw_id, entry in raw_nodes.items():
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            problems.append(Problem(f"node id {raw_id!r} must be a string or an integer (quote it)"))
            continue
        node_id = str(raw_id)
        line = lines.get(node_id)
        spec = _yaml_node(node_id, entry, problems, line)
        if spec is not None:
            nodes[node_id] = spec
    if not raw_nodes:
        problems.append(Problem("'nodes' is empty"))
    if problems:
        raise WorkflowError(source, problems)
    # the same depth budget as the API JSON this workflow converts to (links count as lists)
    budgets.check_depth({nid: {"inputs": {k: [v.node, 0] if isinstance(v, Link) else v
                                          for k, v in spec.inputs.items()}, "_meta": spec.meta}
                         for nid, spec in nodes.items()}, source, "the workflow's nesting of lists and mappings")
    wf = Workflow(nodes, source, description)
    wf.origin = "yaml"
    return wf


def _yaml_node(node_id: str, entry: Any, problems: list[Problem], line: int | None) -> NodeSpec | None:
    if not isinstance(entry, dict):
        problems.append(Problem(f"expected a mapping with a 'type' key, got {kind_name(entry)}", node=node_id, line=line))
        return None
    class_type = entry.get("type")
    if not isinstance(class_type, str) or not class_type:
        problems.append(Problem("missing 'type' (the node's class, e.g. KSampler)", node=node_id, line=line))
        return None
    title = entry.get("title")
    if title is not None and not isinstance(title, str):
        problems.append(Problem("'title' must be a string", node=node_id, line=line))
    meta = entry.get("meta", {})
    if not isinstance(meta, dict):
        problems.append(Problem("'meta' must be a mapping", node=node_id, line=line))
        meta = {}
    nested = entry.get("inputs", {})
    if not isinstance(nested, dict):
        problems.append(Problem("'inputs' must be a mapping of input name to value", node=node_id, line=line))
        nested = {}
    flat = {k: v for k, v in entry.items() if k not in YAML_NODE_KEYS}
    inputs: dict[str, Any] = {}
    for source_map in (flat, nested):
        for name, value in source_map.items():
            if not isinstance(name, str):
                problems.append(Problem(f"input name {name!r} must be a string (quote it)", node=node_id, line=line))
                continue
            if name in inputs:
                problems.append(Problem("input given twice (flat and under 'inputs')", node=node_id, input=name, line=line))
                continue
            inputs[name] = _yaml_value(value, node_id, name, problems, line)
    return NodeSpec(class_type, inputs, title if isinstance(title, str) else None, dict(meta))


def _yaml_value(value: Any, node_id: str, name: str, problems: list[Problem], line: int | None) -> Any:
    if isinstance(value, dict) and "from" in value:
        extra = set(value) - {"from", "output"}
        src, out = value.get("from"), value.get("output")
        if extra or isinstance(src, bool) or not isinstance(src, (str, int)):
            problems.append(Problem("a link is written {from: NODE, output: NAME_OR_INDEX}", node=node_id,
                                    input=name, line=line))
            return value
        if out is not None and (isinstance(out, bool) or not isinstance(out, (str, int))):
            problems.append(Problem(f"link output {out!r} must be a name or an index", node=node_id, input=name, line=line))
            return value
        return Link(str(src), out)
    if isinstance(value, list):
        return api_link(value) or _named_list_link(value) or value
    return value


def _named_list_link(value: list) -> Link | None:
    if len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], str) \
            and not isinstance(value[0], bool) and value[1]:
        return Link(str(value[0]), value[1])
    return None


# -- link resolution shared by the writers and validation ----------------------------------
def classify_input(value: Any, socket: bool, node_ids) -> tuple[str, Any]:
    """What an input value is: ("link", Link), ("const", value), ("bad_link", raw) for a
    malformed API link, or ("text_link", text) for a friendly link naming no node."""
    if isinstance(value, Link):
        return "link", value
    if isinstance(value, (list, tuple)):
        link = api_link(value) or (_named_list_link(list(value)) if isinstance(value, (list, tuple)) else None)
        return ("link", link) if link else ("bad_link", value)
    if isinstance(value, dict) and len(value) == 1 and "__value__" in value:
        return "const", value["__value__"]
    if socket and isinstance(value, str):
        link = link_from_text(value, node_ids)
        return ("link", link) if link else ("text_link", value)
    return "const", value


def resolve_output(link: Link, wf: Workflow, registry) -> tuple[int | None, str | None]:
    """(index, None) for a link to an existing output, else (None, reason)."""
    if link.node not in wf.nodes:
        return None, f"links to node '{link.node}', which is not in the workflow"
    src_type = wf.nodes[link.node].class_type
    src = registry.get(src_type) if registry is not None else None
    if src is None:
        if isinstance(link.output, int):
            return link.output, None
        return None, f"cannot resolve output {link.output!r} of node '{link.node}' (unknown type {src_type})"
    if link.output is None:
        if len(src.outputs) == 1:
            return 0, None
        names = ", ".join(src.output_names) or "none"
        return None, (f"node '{link.node}' ({src_type}) has {len(src.outputs)} outputs ({names}); "
                      f"name one, e.g. {link.node}.{src.output_names[0] if src.outputs else 'OUT'}")
    index = None if isinstance(link.output, str) and link.output.isdigit() and not _is_index(link.output) \
        else src.output_index(link.output)
    if index is None:
        names = ", ".join(f"{i}:{n}" for i, n in enumerate(src.output_names)) or "none"
        return None, f"node '{link.node}' ({src_type}) has no output {link.output!r} (outputs: {names})"
    return index, None


# -- writing -------------------------------------------------------------------------------
def _to_api(wf: Workflow, registry=None) -> dict:
    problems: list[Problem] = []
    out: dict[str, dict] = {}
    for node_id, spec in wf.nodes.items():
        ndef = registry.get(spec.class_type) if registry is not None else None
        inputs = {}
        for name, value in spec.inputs.items():
            ispec = ndef.inputs.get(name) if ndef is not None else None
            socket = ispec is not None and not ispec.widget
            kind, val = classify_input(value, socket, wf.nodes)
            if kind == "link":
                index, reason = resolve_output(val, wf, registry)
                if index is None:
                    problems.append(Problem(reason, node=node_id, input=name))
                    continue
                inputs[name] = [val.node, index]
            elif kind == "text_link":
                problems.append(Problem(f"'{val}' names no node of the workflow", node=node_id, input=name))
            elif isinstance(val, list) or kind == "bad_link":
                inputs[name] = {"__value__": val} if kind == "const" else val
            else:
                inputs[name] = val
            if ndef is None and registry is not None and wf.origin == "yaml" and isinstance(value, str) \
                    and link_from_text(value, wf.nodes):
                problems.append(Problem(f"unknown node type '{spec.class_type}': cannot tell whether "
                                        f"'{value}' is a link or a value", node=node_id, input=name))
        meta = dict(spec.meta)
        title = spec.title or (ndef.display_name if ndef is not None else spec.class_type)
        out[node_id] = {"inputs": inputs, "class_type": spec.class_type, "_meta": {"title": title, **meta}}
    if problems:
        raise WorkflowError(wf.source, problems)
    return out


def _to_yaml(wf: Workflow, registry=None) -> str:
    nodes: dict[str, dict] = {}
    for node_id, spec in wf.nodes.items():
        ndef = registry.get(spec.class_type) if registry is not None else None
        entry: dict[str, Any] = {"type": spec.class_type}
        if spec.title and (ndef is None or spec.title != ndef.display_name):
            entry["title"] = spec.title
        if spec.meta:
            entry["meta"] = dict(spec.meta)
        flat, nested = {}, {}
        for name, value in spec.inputs.items():
            ispec = ndef.inputs.get(name) if ndef is not None else None
            socket = ispec is not None and not ispec.widget
            kind, val = classify_input(value, socket, wf.nodes)
            if kind == "link":
                written = _yaml_link(val, wf, registry, socket)
            elif kind == "const" and (isinstance(val, list) or isinstance(value, dict) and "__value__" in value):
                written = {"__value__": val}
            elif kind == "const" and isinstance(val, dict) and "from" in val:
                written = {"__value__": val}
            else:
                written = val
            (nested if name in YAML_NODE_KEYS else flat)[name] = written
        entry.update(flat)
        if nested:
            entry["inputs"] = nested
        nodes[node_id] = entry
    doc: dict[str, Any] = {}
    if wf.description:
        doc["description"] = wf.description
    doc["nodes"] = nodes
    return dump_yaml(doc)


def _yaml_link(link: Link, wf: Workflow, registry, socket: bool) -> Any:
    src_spec = wf.nodes.get(link.node)
    src = registry.get(src_spec.class_type) if registry is not None and src_spec else None
    label: Any = link.output
    if src is not None:
        index, _ = resolve_output(link, wf, registry)
        if index is not None:
            if socket and len(src.outputs) == 1 and link_from_text(link.node, wf.nodes) == Link(link.node, None):
                return link.node
            label = src.output_label(index)
    if socket and label is not None and link_from_text(f"{link.node}.{label}", wf.nodes) == Link(
            link.node, label):
        return f"{link.node}.{label}"
    return {"from": link.node, "output": label} if label is not None else {"from": link.node}


def _unref(value: Any) -> Any:
    """NodeRef -> Link to its only output; an API list ``["id", 0]`` -> Link."""
    if isinstance(value, NodeRef):
        return Link(value.node_id, None)
    if isinstance(value, list):
        return api_link(value) or value
    return value
