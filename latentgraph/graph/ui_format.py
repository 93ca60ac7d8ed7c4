"""ComfyUI's UI-format workflow (what its Save button writes: nodes, links, widgets_values) to
the API format, in Python — what ComfyUI's frontend does in the browser before it queues.

Widget values are matched to input names by the registry's widget order (required inputs,
then optional, widget types only), skipping the extra value a seed-like input keeps for
control_after_generate (a choice such as "randomize", or a bool in files saved by 2023's frontend)
and the one LoadImage keeps for its upload button. Widgets past the end of the saved values keep
their declared default (a combo without one: its first choice), as in the frontend. A linked widget
input takes the link (its stale value still takes its slot). Reroutes are followed to their
source, PrimitiveNode values are copied into every input they feed, Note and MarkdownNote are
dropped, muted nodes (mode 2) are dropped and bypassed nodes (mode 4) are removed, each output
wired to a matching input as the frontend picks it (the input in the same slot if its type
fits, else the first of exactly the wanted type, else the first that fits).

Subgraphs (``definitions.subgraphs``) are flattened as the frontend flattens them: a node inside
an instance gets the id ``<instance id>:<node id>`` (one prefix per level of nesting); a link
from the subgraph's input node (id -10) continues from whatever feeds that input of the
instance, and a link into its output node (id -20) continues from inside. An instance input
that nothing feeds takes the instance's promoted widget value (its ``widgets_values``, in the
order of ``properties.proxyWidgets`` when present, else one per subgraph input that lands on a
widget), and when the instance holds no value the inner widget keeps its own. A muted or
bypassed instance drops everything inside it. Only nodes that reach an output node are kept.

Before anything is flattened, every graph's shape is checked (each field the conversion reads has
the type it needs, with an error naming the node) and the size of the result is computed from the
definitions (instances x definition sizes, memoised per definition), so a few KB of nested
subgraphs that would flatten into 10^8 nodes is refused in microseconds, naming the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from . import budgets
from .errors import Problem, WorkflowError

FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = "-10", "-20"


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def _links(data: dict, source: str) -> dict[int, tuple]:
    """link id -> (origin id, origin slot, target id, target slot, type), ids as strings;
    links are arrays in schema 0.4 and objects in schema 1 and in subgraph definitions."""
    out = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 5:
            lid, origin, oslot, target, tslot = link[:5]
            ltype = link[5] if len(link) >= 6 else None
        elif isinstance(link, dict) and "id" in link:
            lid, origin, oslot = link["id"], link.get("origin_id"), link.get("origin_slot")
            target, tslot, ltype = link.get("target_id"), link.get("target_slot"), link.get("type")
        else:
            raise WorkflowError(source, f"a link is neither an array nor an object with an id: {link!r}")
        out[lid] = (str(origin), oslot, str(target), tslot, ltype)
    return out


def _widget_specs(ndef) -> list[tuple[str, dict]]:
    """(name, options) of the node's widget inputs, in the order the frontend draws them, with a
    combo's choices added to its options as ``choices`` and ``_boolean`` telling a BOOLEAN."""
    info = ndef.object_info(None)
    specs = []
    for section in ("required", "optional"):
        for name, spec in (info["input"].get(section) or {}).items():
            kind = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            is_widget = isinstance(kind, list) or kind in WIDGET_TYPES
            if is_widget and not options.get("forceInput"):
                choices = kind if isinstance(kind, list) else options.get("options")
                specs.append((name, {**options, "choices": choices, "_boolean": kind == "BOOLEAN"}))
    return specs


def _widget_default(options: dict) -> tuple[bool, Any]:
    """(known, value): what a widget holds before any saved value is put in it, as the frontend makes
    it: the declared default, else a combo's first choice; other widgets without a default are left
    out (validation then names the missing input)."""
    if "default" in options:
        return True, options["default"]
    if options.get("choices"):
        return True, options["choices"][0]
    return False, None


def _is_control_value(value: Any, next_options: dict | None) -> bool:
    """The saved value of a control_after_generate widget: one of its choices, or a bool from
    workflows saved by 2023's frontend (a 'randomize' toggle then; ComfyUI_examples' PNGs hold it),
    unless the next widget is itself a BOOLEAN that a file without control values fills."""
    if isinstance(value, bool):
        return not (next_options or {}).get("_boolean")
    return isinstance(value, str) and value in CONTROL_VALUES


def map_widgets(ndef, values: Any) -> dict[str, Any]:
    """widgets_values (a list, or the dict form) -> {input name: value}."""
    specs = _widget_specs(ndef)
    if isinstance(values, dict):
        return {name: _wrap(values[name]) for name, _ in specs if name in values}
    out: dict[str, Any] = {}
    i = 0
    values = list(values or [])
    for k, (name, options) in enumerate(specs):
        if i >= len(values):
            # the frontend puts saved values into the widgets in order; the rest keep their defaults
            known, default = _widget_default(options)
            if known:
                out[name] = _wrap(default)
            continue
        out[name] = _wrap(values[i])
        i += 1
        # the frontend adds a control widget where declared, and by default to any "seed"/"noise_seed"
        control = options.get("control_after_generate", name in ("seed", "noise_seed"))
        following = specs[k + 1][1] if k + 1 < len(specs) else None
        if control and i < len(values) and _is_control_value(values[i], following):
            i += 1  # the control widget's own value
        if options.get("image_upload") and i < len(values) and values[i] in ("image", "upload"):
            i += 1  # the upload button's value
    return out


def _wrap(value: Any) -> Any:
    """A list value is wrapped as the frontend wraps it, so that it is not read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


def _types_fit(a: Any, b: Any) -> bool:
    """LiteGraph's connection rule: '*' or empty fits anything; 'A,B' lists fit on any common type."""
    if a in (None, "", "*", 0) or b in (None, "", "*", 0):
        return True
    a, b = str(a).lower(), str(b).lower()
    return a == b or bool(set(a.split(",")) & set(b.split(",")))


def _bypass_input(node: dict, slot: int, wanted: Any) -> int | None:
    """Which input a bypassed node's output ``slot`` passes through to a consumer of type ``wanted``."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) else wanted
    if wanted in ("*", ""):
        return slot if slot < len(inputs) else (0 if inputs else None)
    wanted = out_type if wanted is None else wanted
    if slot < len(inputs) and _types_fit(inputs[slot].get("type"), out_type) and _types_fit(inputs[slot].get("type"), wanted):
        return slot
    for i, inp in enumerate(inputs):
        if inp.get("type") == wanted:
            return i
    for i, inp in enumerate(inputs):
        if _types_fit(inp.get("type"), out_type) and _types_fit(inp.get("type"), wanted):
            return i
    return None


class _Graph:
    """One graph: the workflow itself or a subgraph definition."""

    def __init__(self, data: dict, source: str):
        self.data = data
        self.nodes = {str(n["id"]): n for n in data.get("nodes") or [] if isinstance(n, dict) and "id" in n}
        self.links = _links(data, source)
        self.name = data.get("name") or data.get("id") or "workflow"


@dataclass
class _Scope:
    """A graph as placed somewhere: the root, or one instance of a subgraph (at ``path``)."""

    graph: _Graph
    path: tuple[str, ...] = ()
    instance: dict | None = None
    parent: _Scope | None = None
    input_values: dict[str, Any] = field(default_factory=dict)       # subgraph input name -> promoted value
    widget_values: dict[tuple[str, str], Any] = field(default_factory=dict)  # (inner node, widget) -> value
    chain: tuple[str, ...] = ()  # the subgraph definitions entered, to refuse a subgraph inside itself

    def exec_id(self, node_id: str) -> str:
        return ":".join((*self.path, node_id))


class _Flattener:
    def __init__(self, data: dict, registry, source: str):
        self.registry = registry
        self.source = source
        self.definitions: dict[str, _Graph] = {}
        self._collect_definitions(data)
        self.root = _Scope(_Graph(data, source))
        self.scopes: dict[tuple[str, ...], _Scope] = {(): self.root}
        _check_flat_size(self.root.graph, self.definitions, source)

    def _collect_definitions(self, data: dict) -> None:
        defs = data.get("definitions")
        subs = defs.get("subgraphs") if isinstance(defs, dict) else None
        if not isinstance(defs, (dict, type(None))) or not isinstance(subs, (list, type(None))):
            raise WorkflowError(self.source, "'definitions' must be an object with a list 'subgraphs'")
        for sub in subs or []:
            if isinstance(sub, dict) and isinstance(sub.get("id"), (str, int)) and str(sub["id"]) not in self.definitions:
                _check_shape(sub, self.source, f"subgraph '{sub['id']}'")
                self.definitions[str(sub["id"])] = _Graph(sub, self.source)
                self._collect_definitions(sub)  # definitions nested in a definition

    # -- instances ---------------------------------------------------------------------------
    def child(self, scope: _Scope, node: dict) -> _Scope:
        """The scope of the subgraph instance ``node`` placed in ``scope``."""
        path = (*scope.path, str(node["id"]))
        if path in self.scopes:
            return self.scopes[path]
        def_id = str(node["type"])
        graph = self.definitions[def_id]
        if def_id in scope.chain:
            raise WorkflowError(self.source, f"subgraph '{graph.name}' contains itself (node {':'.join(path)})")
        sub = _Scope(graph, path, node, scope, chain=(*scope.chain, def_id))
        for (target, widget), value in self._promoted(graph, node).items():
            self._place_value(sub, target, widget, value)
        # a value the enclosing instance promotes from this instance's own promoted widget
        for (target, widget), value in scope.widget_values.items():
            if target == str(node["id"]):
                sub.input_values[widget] = value
        self.scopes[path] = sub
        return sub

    def _promoted(self, graph: _Graph, node: dict) -> dict[tuple[str, str], Any]:
        """(inner node id, widget name) -> value for each widget the instance shows and holds a value for."""
        values = node.get("widgets_values")
        if not isinstance(values, list) or not values:
            return {}
        proxy = (node.get("properties") or {}).get("proxyWidgets")
        if isinstance(proxy, str):
            try:
                proxy = json.loads(proxy)
            except ValueError:
                proxy = None
        if isinstance(proxy, list):
            entries = [(str(e[0]), str(e[1])) for e in proxy if isinstance(e, list) and len(e) >= 2]
        else:  # one widget per subgraph input that lands on a widget, in input order
            entries = []
            for sub_input in graph.data.get("inputs") or []:
                for link_id in sub_input.get("linkIds") or []:
                    target = self._widget_input_fed_by(graph, link_id)
                    if target is not None:
                        entries.append(target)
                        break
        return {entry: value for entry, value in zip(entries, values)}

    @staticmethod
    def _widget_input_fed_by(graph: _Graph, link_id) -> tuple[str, str] | None:
        link = graph.links.get(link_id)
        if link is None:
            return None
        target = graph.nodes.get(link[2])
        for inp in (target or {}).get("inputs") or []:
            if inp.get("link") == link_id and isinstance(inp.get("widget"), dict):
                return link[2], inp["widget"].get("name", inp.get("name"))
        return None

    @staticmethod
    def _place_value(sub: _Scope, target: str, widget: str, value: Any) -> None:
        """A promoted value goes to the subgraph input feeding that widget, else to the widget itself."""
        node = sub.graph.nodes.get(target) or {}
        for inp in node.get("inputs") or []:
            if (inp.get("widget") or {}).get("name", None) == widget and inp.get("link") is not None:
                link = sub.graph.links.get(inp["link"])
                if link is not None and link[0] == SUBGRAPH_INPUT:
                    ios = sub.graph.data.get("inputs") or []
                    if isinstance(link[1], int) and 0 <= link[1] < len(ios):
                        sub.input_values[ios[link[1]].get("name")] = value
                        return
        sub.widget_values[(target, widget)] = value

    # -- links -------------------------------------------------------------------------------
    def resolve_link(self, scope: _Scope, link_id, wanted, seen: frozenset) -> tuple | None:
        """Where a link really comes from: ("link", exec id, slot), ("value", v) or None."""
        if link_id is None:
            return None
        link = scope.graph.links.get(link_id)
        if link is None:
            return None
        origin, slot = link[0], link[1]
        if origin == SUBGRAPH_INPUT:
            if scope.instance is None:
                return None
            ios = scope.graph.data.get("inputs") or []
            name = ios[slot].get("name") if isinstance(slot, int) and 0 <= slot < len(ios) else None
            outer = next((i for i in scope.instance.get("inputs") or [] if i.get("name") == name), None)
            if outer is None or outer.get("link") is None:
                return ("value", scope.input_values[name]) if name in scope.input_values else None
            return self.resolve_link(scope.parent, outer["link"], wanted, seen)
        node = scope.graph.nodes.get(origin)
        if node is None:
            return None
        return self.resolve_output(scope, node, slot, wanted, seen)

    def resolve_output(self, scope: _Scope, node: dict, slot, wanted, seen: frozenset) -> tuple | None:
        key = (scope.path, str(node["id"]), slot)
        if key in seen:
            raise WorkflowError(self.source, f"links loop through node {scope.exec_id(str(node['id']))} "
                                             f"({node.get('type')}) without reaching a real node")
        seen = seen | {key}
        if len(seen) > budgets.limit("link_hops"):  # each hop is a Python call: stop before the stack does
            raise WorkflowError(self.source, budgets.over(
                "link_hops", f"the link into node {scope.exec_id(str(node['id']))} passing through reroutes, "
                             f"bypassed nodes and subgraphs"))
        kind, mode = str(node.get("type")), node.get("mode", 0)
        if mode == BYPASSED:
            index = _bypass_input(node, slot, wanted)
            if index is None:
                return None
            return self.resolve_link(scope, (node.get("inputs") or [])[index].get("link"), wanted, seen)
        if mode == MUTED:
            return None
        if kind == "Reroute":
            inputs = node.get("inputs") or [{}]
            return self.resolve_link(scope, inputs[0].get("link"), wanted, seen)
        if kind == "PrimitiveNode":
            return ("value", (node.get("widgets_values") or [None])[0])
        if kind in self.definitions:
            sub = self.child(scope, node)
            inner = next((lid for lid, link in sub.graph.links.items()
                          if link[2] == SUBGRAPH_OUTPUT and link[3] == slot), None)
            return self.resolve_link(sub, inner, wanted, seen)
        if kind in FRONTEND_ONLY:
            return None
        return ("link", scope.exec_id(str(node["id"])), slot)

    # -- nodes -------------------------------------------------------------------------------
    def flatten(self) -> dict[str, dict]:
        prompt: dict[str, dict] = {}
        self._add_nodes(self.root, prompt)
        return prompt

    def _add_nodes(self, scope: _Scope, prompt: dict) -> None:
        for node_id, node in scope.graph.nodes.items():
            kind = str(node.get("type"))
            if node.get("mode", 0) in (MUTED, BYPASSED) or kind in FRONTEND_ONLY:
                continue
            if kind in self.definitions:
                self._add_nodes(self.child(scope, node), prompt)
                continue
            ndef = self.registry.get(kind)
            inputs: dict[str, Any] = map_widgets(ndef, node.get("widgets_values")) if ndef is not None else {}
            for (target, widget), value in scope.widget_values.items():
                if target == node_id:
                    inputs[widget] = _wrap(value)
            for inp in node.get("inputs") or []:
                found = self.resolve_link(scope, inp.get("link"), inp.get("type"), frozenset())
                if found is not None:
                    inputs[inp["name"]] = _wrap(found[1]) if found[0] == "value" else [found[1], found[2]]
            title = node.get("title") or (ndef.display_name if ndef is not None else kind)
            prompt[scope.exec_id(node_id)] = {"inputs": inputs, "class_type": kind, "_meta": {"title": title}}


def ui_to_api(data: dict, registry, source: str = "<workflow>") -> dict:
    """The API prompt ComfyUI's frontend would queue for this UI workflow."""
    if not is_ui_workflow(data):
        raise WorkflowError(source, "not a UI-format workflow (no nodes and links)")
    extra = data.get("extra")
    if isinstance(extra, dict) and extra.get("groupNodes"):
        raise WorkflowError(source, "legacy group nodes (extra.groupNodes) are not supported; open the workflow in "
                                    "ComfyUI, convert each group node to a subgraph (or ungroup it) and save again")
    _check_shape(data, source, "the workflow")
    prompt = _Flattener(data, registry, source).flatten()

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
    out = {k: v for k, v in prompt.items() if k in keep}
    for entry in out.values():  # a link to a node that is not in the prompt is dropped, as the frontend does
        entry["inputs"] = {k: v for k, v in entry["inputs"].items()
                           if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and v[0] not in out)}
    return out


# -- shape and size, checked before flattening -------------------------------------------------
_SCALAR = (str, int)


def _is_id(value: Any) -> bool:
    return isinstance(value, _SCALAR) and not isinstance(value, bool)


def _is_slot(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_shape(graph: dict, source: str, label: str) -> None:
    """Every field the conversion reads has the type it needs; all problems at once."""
    nodes, links = graph.get("nodes", []), graph.get("links")
    if not isinstance(nodes, list) or not isinstance(links, (list, type(None))):
        raise WorkflowError(source, f"{label}: 'nodes' and 'links' must be lists")
    budgets.check("nodes", len(nodes), source, f"{label}: the node count")
    budgets.check("links", len(links or []), source, f"{label}: the link count")
    problems: list[Problem] = []
    for node in nodes:
        if not isinstance(node, dict) or not _is_id(node.get("id")):
            problems.append(Problem(f"{label}: a node is not an object with an integer or string 'id': "
                                    f"{str(node)[:80]}"))
            continue
        problems += _node_shape(node, label)
    for link in links or []:
        if isinstance(link, list) and len(link) >= 5:
            lid, origin, oslot, target, tslot = link[:5]
        elif isinstance(link, dict):
            lid, origin, oslot = link.get("id"), link.get("origin_id"), link.get("origin_slot")
            target, tslot = link.get("target_id"), link.get("target_slot")
        else:
            problems.append(Problem(f"{label}: a link is neither an array of 6 nor an object: {str(link)[:80]}"))
            continue
        if not (_is_id(lid) and _is_id(origin) and _is_id(target) and _is_slot(oslot) and _is_slot(tslot)):
            problems.append(Problem(f"{label}: link {str(lid)[:40]} needs an id, origin and target node ids and "
                                    f"slots that are integers >= 0: {str(link)[:80]}"))
    for io in ("inputs", "outputs"):
        for entry in _list_of(graph, io, problems, label, None):
            if not isinstance(entry.get("linkIds", []), list):
                problems.append(Problem(f"{label}: the linkIds of subgraph {io[:-1]} {entry.get('name')!r} "
                                        f"must be a list"))
    if problems:
        raise WorkflowError(source, problems)


def _node_shape(node: dict, label: str) -> list[Problem]:
    nid = str(node["id"])
    problems: list[Problem] = []
    if not isinstance(node.get("type"), str):
        problems.append(Problem(f"{label}: 'type' must be a string", node=nid))
    if not isinstance(node.get("mode", 0), (int, type(None))):
        problems.append(Problem(f"{label}: 'mode' must be an integer", node=nid))
    for name, kinds in (("properties", dict), ("widgets_values", (list, dict))):
        if not isinstance(node.get(name), (kinds, type(None))):
            problems.append(Problem(f"{label}: '{name}' must be {'an object' if kinds is dict else 'a list'}",
                                    node=nid))
    _list_of(node, "outputs", problems, label, nid)
    for inp in _list_of(node, "inputs", problems, label, nid):
        if not isinstance(inp.get("name"), str) or not (inp.get("link") is None or _is_id(inp.get("link"))) \
                or not isinstance(inp.get("widget"), (dict, type(None))):
            problems.append(Problem(f"{label}: an input needs a string 'name', a link id or null, and a widget "
                                    f"object or none: {str(inp)[:80]}", node=nid))
    return problems


def _list_of(owner: dict, key: str, problems: list[Problem], label: str, nid: str | None) -> list[dict]:
    """``owner[key]`` when it is a list of objects (or absent); else a problem and []."""
    value = owner.get(key) or []
    if isinstance(value, list) and all(isinstance(v, dict) for v in value):
        return value
    problems.append(Problem(f"{label}: '{key}' must be a list of objects", node=nid))
    return []


def _check_flat_size(root: _Graph, definitions: dict[str, _Graph], source: str) -> None:
    """Refuse, before flattening, a workflow whose subgraphs would flatten past the node budget or
    nest past the depth budget: the size of each definition (its nodes, plus for each instance 1 +
    the instance's size) is computed once and reused, so 10^8 nodes are found in microseconds."""
    sizes: dict[str, tuple[int, int]] = {}  # definition id -> (nodes once flattened, nesting below)
    max_nodes, max_depth = budgets.limit("nodes"), budgets.limit("subgraph_depth")

    def size(graph: _Graph, chain: tuple[str, ...]) -> tuple[int, int]:
        total, height = 0, 0
        for node_id, node in graph.nodes.items():
            kind = str(node.get("type"))
            if kind not in definitions:
                total += 1
                continue
            if kind in chain:
                raise WorkflowError(source, f"subgraph '{definitions[kind].name}' contains itself "
                                            f"(node {node_id} of '{graph.name}')")
            if len(chain) >= max_depth:
                raise WorkflowError(source, budgets.over("subgraph_depth", "subgraphs nested inside each other"))
            if kind not in sizes:
                sizes[kind] = size(definitions[kind], (*chain, kind))
            inner, below = sizes[kind]
            total, height = total + 1 + inner, max(height, below + 1)
            if total > max_nodes:  # stop counting at once: the total may have hundreds of digits
                raise WorkflowError(source, budgets.over(
                    "nodes", f"the workflow once its subgraphs are flattened (instances x their contents)"))
            if len(chain) + height > max_depth:
                raise WorkflowError(source, budgets.over("subgraph_depth", "subgraphs nested inside each other"))
        return total, height

    size(root, ())
