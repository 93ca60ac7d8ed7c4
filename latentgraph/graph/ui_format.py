"""ComfyUI's UI-format workflow (what its Save button writes: nodes, links, widgets_values) to
the API format, in Python — what ComfyUI's frontend does in the browser before it queues.

Widget values are matched to input names by the registry's widget order (required inputs,
then optional, widget types only), skipping the extra value a seed-like input keeps for
control_after_generate and the one LoadImage keeps for its upload button. A linked widget
input takes the link (its stale value still takes its slot). Reroutes are followed to their
source, PrimitiveNode values are copied into every input they feed, Note and MarkdownNote are
dropped, muted nodes (mode 2) are dropped and bypassed nodes (mode 4) are removed with each
output wired to the node's first input of the same type. Only nodes that reach an output node
are kept.
"""

from __future__ import annotations

from typing import Any

from .errors import WorkflowError

FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _links(data: dict, source: str) -> dict[int, tuple]:
    """link id -> (origin id, origin slot, target id, target slot, type); arrays (0.4) or objects (1)."""
    out = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            out[link[0]] = tuple(link[1:6]) if len(link) >= 6 else (*link[1:5], None)
        elif isinstance(link, dict):
            out[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                               link.get("type"))
        else:
            raise WorkflowError(source, f"a link is neither an array nor an object: {link!r}")
    return out


def _widget_specs(ndef) -> list[tuple[str, dict]]:
    """(name, options) of the node's widget inputs, in the order the frontend draws them."""
    info = ndef.object_info(None)
    specs = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not options.get("forceInput"):
                specs.append((name, options))
    return specs


def map_widgets(ndef, values: Any) -> dict[str, Any]:
    """widgets_values (a list, or the dict form) -> {input name: value}."""
    specs = _widget_specs(ndef)
    if isinstance(values, dict):
        return {name: values[name] for name, _ in specs if name in values}
    out: dict[str, Any] = {}
    i = 0
    values = list(values or [])
    for name, options in specs:
        if i >= len(values):
            break
        out[name] = values[i]
        i += 1
        if options.get("control_after_generate") and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1  # the control_after_generate widget's own value
        if options.get("image_upload") and i < len(values) and values[i] in ("image", "upload"):
            i += 1  # the upload button's value
    return out


def ui_to_api(data: dict, registry, source: str = "<workflow>") -> dict:
    """The API prompt ComfyUI's frontend would queue for this UI workflow."""
    if not is_ui_workflow(data):
        raise WorkflowError(source, "not a UI-format workflow (no nodes and links)")
    if data.get("definitions", {}).get("subgraphs"):
        raise WorkflowError(source, "subgraphs are not supported yet")
    if (data.get("extra") or {}).get("groupNodes"):
        raise WorkflowError(source, "legacy group nodes (extra.groupNodes) are not supported; ungroup them in "
                                    "ComfyUI and save again")
    nodes = {n["id"]: n for n in data["nodes"]}
    links = _links(data, source)

    def resolve(link_id, seen=()) -> tuple | None:
        """A link's real source: ("link", node, slot), ("value", v) for a primitive, or None."""
        if link_id is None or link_id not in links:
            return None
        origin, slot, _, _, ltype = links[link_id]
        node = nodes.get(origin)
        if node is None or origin in seen:
            return None
        kind, mode = node.get("type"), node.get("mode", 0)
        if kind == "Reroute":
            (inp,) = node.get("inputs") or [{"link": None}]
            return resolve(inp.get("link"), (*seen, origin))
        if kind == "PrimitiveNode":
            return ("value", (node.get("widgets_values") or [None])[0])
        if mode == MUTED:
            return None
        if mode == BYPASSED:
            outputs = node.get("outputs") or []
            wanted = outputs[slot].get("type") if slot < len(outputs) else ltype
            for inp in node.get("inputs") or []:
                if inp.get("type") == wanted and inp.get("link") is not None:
                    return resolve(inp["link"], (*seen, origin))
            return None
        return ("link", str(origin), slot)

    prompt: dict[str, dict] = {}
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in FRONTEND_ONLY or node.get("mode", 0) in (MUTED, BYPASSED):
            continue
        ndef = registry.get(kind)
        inputs: dict[str, Any] = map_widgets(ndef, node.get("widgets_values")) if ndef is not None else {}
        for inp in node.get("inputs") or []:
            found = resolve(inp.get("link"))
            if found is None:
                continue
            inputs[inp["name"]] = found[1] if found[0] == "value" else [found[1], found[2]]
        title = node.get("title") or (ndef.display_name if ndef is not None else kind)
        prompt[str(node_id)] = {"inputs": inputs, "class_type": kind, "_meta": {"title": title}}

    # keep what reaches an output node (unknown types count as outputs: validation reports them)
    def is_output(entry) -> bool:
        ndef = registry.get(entry["class_type"])
        return ndef is None or ndef.output_node
    keep: set[str] = set()
    stack = [k for k, v in prompt.items() if is_output(v)]
    while stack:
        k = stack.pop()
        if k in keep or k not in prompt:
            continue
        keep.add(k)
        stack.extend(v[0] for v in prompt[k]["inputs"].values() if isinstance(v, list) and len(v) == 2
                     and isinstance(v[0], str))
    return {k: v for k, v in prompt.items() if k in keep}
