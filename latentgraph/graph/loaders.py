"""Reading and writing workflow files: ComfyUI API JSON, YAML for people, PNG ``prompt`` chunks.

Every structural problem of a file is collected and raised at once in one WorkflowError that
names the file, the node, the input and (for YAML) the line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from .errors import Problem, WorkflowError
from .ui_format import is_ui_workflow, ui_to_api
from .workflow import Link, NodeSpec, Workflow, api_link, link_from_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
YAML_NODE_KEYS = ("type", "title", "meta", "inputs")
YAML_TOP_KEYS = ("nodes", "version", "description")
FORMAT_VERSION = 1


# -- reading -------------------------------------------------------------------------------
def load_file(path: str | Path, registry=None) -> Workflow:
    """A workflow file; UI-format JSON (and PNGs carrying only a ``workflow`` chunk) need the
    ``registry`` to map widget values to inputs."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise WorkflowError(source, "file not found") from None
    except IsADirectoryError:
        raise WorkflowError(source, "is a directory, not a workflow file") from None
    except OSError as exc:
        raise WorkflowError(source, f"cannot read the file: {exc.strerror or exc}") from None
    if data.startswith(PNG_MAGIC):
        return _load_png(path, source, registry)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowError(source, f"not a text file (byte {exc.start} is not UTF-8); expected YAML or JSON") from None
    return load_text(text, source, registry)


def load_text(text: str, source: str = "<string>", registry=None) -> Workflow:
    """Parse YAML or JSON text, telling API JSON from YAML-structured documents by content."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise WorkflowError(source, "the file is empty")
    is_json = stripped[0] in "{["
    data = _parse_json(text, source) if is_json else _parse_yaml(text, source)
    return workflow_from_data(data, source, text, is_json, registry)


def workflow_from_data(data: Any, source: str, text: str | None = None, is_json: bool = False,
                       registry=None) -> Workflow:
    if isinstance(data, dict):
        if is_ui_workflow(data):
            return workflow_from_ui(data, source, registry)
        nodes = data.get("nodes")
        if "nodes" in data and not (isinstance(nodes, dict) and "class_type" in nodes):
            return workflow_from_yaml(data, source, text)
        prompt = data.get("prompt")
        if isinstance(prompt, dict) and "class_type" not in prompt:  # a /prompt request body
            wf = workflow_from_api(prompt, source)
            if isinstance(data.get("extra_data"), dict):
                wf.extra = data["extra_data"]
            return wf
        if data and (is_json or all(isinstance(v, dict) for v in data.values())):
            return workflow_from_api(data, source)
        if not data:
            raise WorkflowError(source, "the workflow has no nodes")
    kind = _kind(data) if not isinstance(data, dict) else "mapping without 'nodes'"
    raise WorkflowError(
        source,
        f"expected a workflow: a YAML mapping with a 'nodes' key, or API JSON "
        f"{{\"id\": {{\"class_type\": ..., \"inputs\": {{...}}}}}}; got a {kind}",
    )


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(source, [Problem(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)]) from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise WorkflowError(source, f"invalid JSON: {exc}") from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:
                continue  # unhashable key: SafeLoader reports it
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "syntax error"
        col = f" (column {mark.column + 1})" if mark else ""
        raise WorkflowError(source, [Problem(f"invalid YAML: {what}{col}", line=line)]) from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise WorkflowError(source, f"invalid YAML: {exc}") from None


def workflow_from_ui(data: dict, source: str, registry) -> Workflow:
    """A ComfyUI UI-format workflow, converted as ComfyUI's frontend converts it."""
    if registry is None:
        raise WorkflowError(source, "this is a ComfyUI UI-format workflow (nodes/links); converting it needs the "
                                    "node registry (Workflow.load(path, registry=...))")
    wf = workflow_from_api(ui_to_api(data, registry, source), source)
    wf.origin = "ui"
    wf.extra = {"extra_pnginfo": {"workflow": data}}
    return wf


def _load_png(path: Path, source: str, registry=None) -> Workflow:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            chunks = dict(getattr(im, "text", {}) or im.info)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise WorkflowError(source, f"cannot read the PNG: {exc}") from None
    if isinstance(chunks.get("prompt"), str):
        data = _parse_json(chunks["prompt"], f"{source} (prompt chunk)")
        wf = workflow_from_api(data, source)
    elif isinstance(chunks.get("workflow"), str):
        data = _parse_json(chunks["workflow"], f"{source} (workflow chunk)")
        wf = workflow_from_ui(data, source, registry)
    else:
        raise WorkflowError(source, "the PNG carries no workflow (no 'prompt' or 'workflow' text chunk)")
    wf.origin = "png"
    # the other JSON chunks (ComfyUI's extra_pnginfo: 'workflow', ...) go with it, so that the
    # images it saves carry the same metadata as the picture it came from
    pnginfo = {}
    for key, text in chunks.items():
        if key != "prompt" and isinstance(text, str):
            try:
                pnginfo[key] = json.loads(text)
            except ValueError:
                continue  # a chunk that is not JSON (Software, parameters, ...) is not extra_pnginfo
    if pnginfo:
        wf.extra = {"extra_pnginfo": pnginfo}
    return wf


def workflow_from_api(data: Any, source: str = "<prompt>") -> Workflow:
    """ComfyUI API format: ``{"id": {"class_type", "inputs", "_meta"}}``."""
    if not isinstance(data, dict):
        raise WorkflowError(source, f"expected a JSON object mapping node ids to nodes, got {type(data).__name__}")
    problems: list[Problem] = []
    nodes: dict[str, NodeSpec] = {}
    for raw_id, entry in data.items():
        node_id = str(raw_id)
        if not isinstance(entry, dict):
            problems.append(Problem(f"expected an object with class_type and inputs, got {_kind(entry)}", node=node_id))
            continue
        class_type = entry.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(Problem("missing 'class_type' (the node's type name)", node=node_id))
            continue
        inputs = entry.get("inputs", {})
        if not isinstance(inputs, dict):
            problems.append(Problem(f"'inputs' must be an object, got {_kind(inputs)}", node=node_id))
            continue
        meta = entry.get("_meta", {})
        if not isinstance(meta, dict):
            problems.append(Problem(f"'_meta' must be an object, got {_kind(meta)}", node=node_id))
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


def workflow_from_yaml(data: dict, source: str, text: str | None = None) -> Workflow:
    """YAML for people (see the README's "Workflow files"):

        nodes:
          ckpt: {type: CheckpointLoaderSimple, ckpt_name: demo.safetensors}
          pos:  {type: CLIPTextEncode, clip: ckpt.CLIP, text: "a red circle"}
    """
    problems: list[Problem] = []
    lines = _yaml_node_lines(text) if text else {}
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
        problems.append(Problem(f"'nodes' must be a mapping of node id to node, got {_kind(raw_nodes)}"))
        raise WorkflowError(source, problems)
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
    wf = Workflow(nodes, source, description)
    wf.origin = "yaml"
    return wf


def _yaml_node(node_id: str, entry: Any, problems: list[Problem], line: int | None) -> NodeSpec | None:
    if not isinstance(entry, dict):
        problems.append(Problem(f"expected a mapping with a 'type' key, got {_kind(entry)}", node=node_id, line=line))
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


def _yaml_node_lines(text: str) -> dict[str, int]:
    """Line of each node id under ``nodes:`` (for messages); {} if it cannot be told."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    for key, value in root.value:
        if key.value == "nodes" and isinstance(value, yaml.MappingNode):
            return {str(k.value): k.start_mark.line + 1 for k, _ in value.value}
    return {}


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "mapping", list: "list", str: "string", int: "integer", float: "number",
            bool: "boolean"}.get(type(value), type(value).__name__)


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
    index = src.output_index(link.output)
    if index is None:
        names = ", ".join(f"{i}:{n}" for i, n in enumerate(src.output_names)) or "none"
        return None, f"node '{link.node}' ({src_type}) has no output {link.output!r} (outputs: {names})"
    return index, None


# -- writing -------------------------------------------------------------------------------
def workflow_to_api(wf: Workflow, registry=None) -> dict:
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


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks and never uses anchors."""

    def ignore_aliases(self, data):
        return True


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value and not any(c in value for c in "\r\t") and value == value.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _float_representer(dumper, value: float):
    if math.isnan(value):
        return dumper.represent_scalar("tag:yaml.org,2002:float", ".nan")
    return yaml.SafeDumper.represent_float(dumper, value)


_Dumper.add_representer(str, _str_representer)
_Dumper.add_representer(float, _float_representer)


def workflow_to_yaml(wf: Workflow, registry=None) -> str:
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
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


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
