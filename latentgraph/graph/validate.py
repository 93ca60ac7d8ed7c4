"""Validation: check everything the output nodes need, report every problem at once in
ComfyUI's ``node_errors`` shape, and hand the executor a Plan (a DAG in topological order)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .declare import NodeDef
from .errors import ExpansionError, Problem, ValidationError, WorkflowError
from .types import MISSING, CoercionError, types_compatible
from .lazy import lazy
from .workflow import Link, Workflow, classify_input, resolve_output

nx = lazy("networkx")  # 0.1-0.2 s to import: paid when a workflow is validated, not by `nodes`


@dataclass
class PlanNode:
    """A validated node: coerced constants (defaults filled in) and resolved links."""

    id: str
    ndef: NodeDef
    consts: dict[str, Any]
    links: dict[str, tuple[str, int]]  # input name -> (source node id, output index)


@dataclass
class Plan:
    """What runs: the needed nodes in topological order, and the targets they serve."""

    workflow: Workflow
    nodes: dict[str, PlanNode]  # in topological order
    targets: list[str]
    warnings: list[Problem] = field(default_factory=list)
    graph: nx.DiGraph | None = None  # edges run source -> consumer; shared, do not modify
    node_errors: dict[str, dict] = field(default_factory=dict)  # partial: why the other outputs were dropped


@dataclass
class ValidationReport:
    """ComfyUI's validation result: a top-level ``error`` and per-node ``node_errors``."""

    source: str | None
    error: dict | None
    node_errors: dict[str, dict]
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.node_errors

    def as_comfy(self) -> dict:
        """The body of ComfyUI's 400 answer to POST /prompt."""
        return {"error": self.error, "node_errors": self.node_errors}

    def count(self) -> int:
        return sum(len(e["errors"]) for e in self.node_errors.values()) + (
            0 if self.node_errors or self.error is None else 1)

    def format(self) -> str:
        src = self.source or "<workflow>"
        n = self.count()
        lines = [f"{src}: invalid workflow, {n} problem{'s' if n != 1 else ''}:"]
        missing = [(e["class_type"], node_id) for node_id, e in self.node_errors.items()
                   if any(err["type"] == "missing_node_type" for err in e["errors"])]
        if missing:
            listed = ", ".join(f"{kind} (node {node_id})" for kind, node_id in sorted(missing))
            lines.append(f"  unsupported node{'s' if len(missing) != 1 else ''}: {listed}")
        if not self.node_errors and self.error:
            lines.append(f"  - {self.error['message']}" + (f": {self.error['details']}" if self.error["details"] else ""))
        for node_id, entry in self.node_errors.items():
            lines.append(f"  node '{node_id}' ({entry['class_type']}):")
            for err in entry["errors"]:
                name = err.get("extra_info", {}).get("input_name")
                head = f"input '{name}': " if name else ""
                lines.append(f"    - {head}{_describe(err)}")
        return "\n".join(lines)


def _describe(err: dict) -> str:
    kind, msg, details = err["type"], err["message"], err["details"]
    if kind in ("value_smaller_than_min", "value_bigger_than_max", "required_input_missing"):
        return msg
    if kind == "value_not_in_list":
        return details.split(": ", 1)[-1] if details else msg
    if kind in ("invalid_input_type", "return_type_mismatch", "bad_linked_input", "custom_validation_failed"):
        return f"{msg} ({details})" if details else msg
    return msg


def _err(kind: str, message: str, details: str = "", **extra: Any) -> dict:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate(wf: Workflow, registry, env=None, targets: list[str] | None = None,
             partial: bool = False, memo: dict | None = None) -> Plan:
    """Check what ``targets`` (default: every output node) need; return the Plan or raise
    ValidationError listing every problem. With ``partial``, run the targets that are valid
    (ComfyUI's behaviour) and fail only when none is. ``memo`` (a dict the caller keeps)
    lets a graph of unchanged structure reuse its DiGraph and order."""
    node_errors: dict[str, list[dict]] = {}
    warnings: list[Problem] = []

    for node_id, spec in wf.nodes.items():
        if spec.class_type not in registry:
            hint = registry.missing_hint(spec.class_type)
            node_errors[node_id] = [_err("missing_node_type", f"Node type '{spec.class_type}' is not registered; {hint}",
                                         f"Node ID '#{node_id}'", class_type=spec.class_type)]

    global_error = None
    if targets is None:
        targets = [i for i, s in wf.nodes.items() if (d := registry.get(s.class_type)) is not None and d.output_node]
        if not targets:
            global_error = _err("prompt_no_outputs", "Prompt has no outputs",
                                "the workflow has no output node (SaveImage, PreviewImage, ...)")
    else:
        targets = [str(t) for t in targets]
        missing = [t for t in targets if t not in wf.nodes]
        if missing:
            global_error = _err("invalid_prompt", "Requested outputs are not in the workflow", ", ".join(missing))
            targets = [t for t in targets if t in wf.nodes]

    checker = _Checker(wf, registry, env, node_errors, warnings)
    graph, order = _graph(*checker.walk(targets), memo)
    if order is None:
        _check_cycles(graph, wf, node_errors)

    report_errors = {k: v for k, v in node_errors.items() if v}
    skipped: dict[str, dict] = {}
    if report_errors or global_error:
        bad = set(report_errors)
        dependents = _dependent_outputs(graph, targets, bad)
        good = [t for t in targets if not dependents["__good__"].get(t)]
        if partial and good and global_error is None:
            skipped = _report(wf, report_errors, dependents, None, warnings).node_errors
            targets = good
            graph = graph.subgraph(set().union(*(nx.ancestors(graph, t) | {t} for t in good))).copy()
        else:
            raise ValidationError(_report(wf, report_errors, dependents, global_error, warnings))

    if order is None or partial:
        order = list(nx.topological_sort(graph))
    nodes = {i: checker.plan_nodes[i] for i in order}
    return Plan(wf, nodes, targets, warnings, graph, skipped)


def check_expansion(wf: Workflow, graph: dict, registry, env, parent: str) -> dict[str, PlanNode]:
    """The nodes a running node asked to add (node expansion), checked as a prompt's nodes
    are and added to ``wf`` (the run's own copy): their links may point at one another or at
    any node already in ``wf``. Returns their PlanNodes in the graph's order; raises
    ExpansionError listing every problem (ComfyUI does not check them; an expansion here is
    held to the same rules as a prompt, so a wrong one fails at its parent with a message
    rather than somewhere inside). One difference from a prompt: a socket input may hold a value
    instead of a link (controlnet_aux's ExecuteAllControlNetPreprocessors puts the IMAGE tensor
    it was given into each node it adds), which the node gets as it is, as in ComfyUI."""
    try:
        added = Workflow.from_api(graph, source=f"the expansion of node '{parent}'")
    except WorkflowError as exc:
        raise ExpansionError(str(exc)) from None
    clashes = sorted(n for n in added.nodes if n in wf.nodes)
    if clashes:
        raise ExpansionError(f"node '{parent}' added node ids that already exist: {', '.join(clashes[:5])} "
                             f"(ids must be unique and the same from run to run: use GraphBuilder)")
    wf.nodes.update(added.nodes)
    node_errors: dict[str, list[dict]] = {}
    checker = _Checker(wf, registry, env, node_errors, [], expansion=True)
    for node_id, spec in added.nodes.items():
        ndef = registry.get(spec.class_type)
        if ndef is None:
            node_errors[node_id] = [_err("missing_node_type", f"Node type '{spec.class_type}' is not registered", "")]
            continue
        checker.check_node(node_id, ndef)
    if node_errors:
        lines = [f"node '{n}' ({added.nodes[n].class_type}): {_describe(e)}"
                 + (f" [input '{e['extra_info']['input_name']}']" if e["extra_info"].get("input_name") else "")
                 for n, errs in node_errors.items() for e in errs]
        for n in added.nodes:
            wf.nodes.pop(n, None)
        raise ExpansionError(f"node '{parent}' expanded into an invalid graph: " + "; ".join(lines))
    return {n: checker.plan_nodes[n] for n in added.nodes}


def _graph(nodes: list[str], edges: list, memo: dict | None) -> tuple[nx.DiGraph, list[str] | None]:
    """The DiGraph of the needed nodes and its topological order (None if it has a cycle).
    Building it is most of the cost of validating a large graph; an unchanged structure
    reuses the last one."""
    key = (nodes, edges)
    if memo is not None and memo.get("key") == key:
        return memo["graph"], memo["order"]
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from(edges)
    try:  # a topological order exists exactly when there is no cycle
        order = list(nx.topological_sort(graph))
    except nx.NetworkXUnfeasible:
        order = None
    if memo is not None:
        memo.update(key=key, graph=graph, order=order)
    return graph, order


def _report(wf, node_errors, dependents, global_error, warnings) -> ValidationReport:
    out = {}
    for node_id, errors in node_errors.items():
        out[node_id] = {"errors": errors, "dependent_outputs": sorted(dependents.get(node_id, [])),
                        "class_type": wf.nodes[node_id].class_type}
    if out:
        lines = [f"{e['message']}: {e['details']}" for v in out.values() for e in v["errors"]]
        global_error = _err("prompt_outputs_failed_validation", "Prompt outputs failed validation", "\n".join(lines))
    return ValidationReport(wf.source, global_error, out, warnings)


def _dependent_outputs(graph: nx.DiGraph, targets: list[str], bad: set[str]) -> dict:
    deps: dict[str, list[str]] = {}
    status: dict[str, bool] = {}
    for t in targets:
        upstream = (nx.ancestors(graph, t) | {t}) if t in graph else {t}
        hit = upstream & bad
        status[t] = bool(hit)
        for n in hit:
            deps.setdefault(n, []).append(t)
    deps["__good__"] = status  # target -> has errors
    return deps


def _check_cycles(graph: nx.DiGraph, wf: Workflow, node_errors: dict) -> None:
    for comp in nx.strongly_connected_components(graph):
        if len(comp) == 1 and not graph.has_edge(next(iter(comp)), next(iter(comp))):
            continue
        cycle = [u for u, _ in nx.find_cycle(graph.subgraph(comp))]
        path = " -> ".join(f"{n} ({wf.nodes[n].class_type})" for n in cycle + cycle[:1])
        for n in sorted(comp):
            node_errors.setdefault(n, []).append(
                _err("dependency_cycle", f"Dependency cycle: {path}", path, cycle_nodes=sorted(comp)))


class _Checker:
    """Walks from the targets through links, checking each needed node once."""

    def __init__(self, wf: Workflow, registry, env, node_errors: dict, warnings: list, expansion: bool = False):
        self.wf, self.registry, self.env = wf, registry, env
        self.node_errors, self.warnings = node_errors, warnings
        self.expansion = expansion  # an expansion's socket inputs may hold values (see check_expansion)
        self.plan_nodes: dict[str, PlanNode] = {}
        self._choices: dict[int, list] = {}

    def walk(self, targets: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
        queue = deque(targets)
        seen = set(targets)
        edges = []
        while queue:
            node_id = queue.popleft()
            ndef = self.registry.get(self.wf.nodes[node_id].class_type)
            if ndef is None:
                continue
            for src in self.check_node(node_id, ndef):
                edges.append((src, node_id))
                if src not in seen:
                    seen.add(src)
                    queue.append(src)
        return [n for n in self.wf.nodes if n in seen], edges  # nodes in file order

    def check_node(self, node_id: str, ndef: NodeDef) -> list[str]:
        """Check one node's inputs; return the ids of the nodes it links from."""
        spec = self.wf.nodes[node_id]
        errors: list[dict] = []
        consts: dict[str, Any] = {}
        links: dict[str, tuple[str, int]] = {}
        sources: list[str] = []
        raw_inputs = spec.inputs
        nodes, registry = self.wf.nodes, self.registry
        for name, ispec in ndef.inputs.items():
            raw = raw_inputs.get(name, MISSING)
            if type(raw) is Link and type(raw.output) is int:  # fast path: a well-formed API link
                src_spec = nodes.get(raw.node)
                src_def = registry.get(src_spec.class_type) if src_spec is not None else None
                if src_def is not None and 0 <= raw.output < len(src_def.output_types) \
                        and src_def.output_types[raw.output] == ispec.type:
                    links[name] = (raw.node, raw.output)
                    sources.append(raw.node)
                    continue
            if raw is MISSING:
                if ispec.widget and ispec.default is not MISSING and not ispec.optional:
                    consts[name] = ispec.default
                elif not ispec.optional:
                    errors.append(_err("required_input_missing", "Required input is missing", name, input_name=name))
                continue
            kind, val = classify_input(raw, not ispec.widget, nodes)
            if kind == "link":
                src = self._check_link(node_id, name, ispec, val, errors, ndef.validate_types)
                if src is not None:
                    links[name] = src
                if val.node in nodes:  # checked even when the link itself is wrong
                    sources.append(val.node)
            elif kind == "bad_link":
                errors.append(_err("bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                                   f"{name}", input_name=name, input_config=ispec.info([]), received_value=val))
            elif kind == "text_link":
                target = val.rpartition(".")[0] or val
                errors.append(_err("missing_linked_node", f"Input links to node '{target}', which is not in the workflow",
                                   f"{name}: '{val}'", input_name=name, received_value=val))
            elif not ispec.widget and self.expansion:
                consts[name] = val  # a value a running node computed, given as it is (ComfyUI does the same)
            elif not ispec.widget:
                errors.append(_err("invalid_input_type",
                                   f"Input takes a link from a {ispec.type} output, not a constant",
                                   f"{name}, {_short(val)}", input_name=name, received_value=_short(val),
                                   input_config=ispec.info([])))
            else:
                value = self._check_const(name, ispec, val, ndef, errors)
                if value is not MISSING:
                    consts[name] = value
        for name in raw_inputs:
            if name not in ndef.inputs and name not in ndef.hidden:
                self.warnings.append(Problem(f"{ndef.name} has no input '{name}'; the value is ignored",
                                             node=node_id, input=name))
        if ndef.validate is not None and not errors:
            errors.extend(self._custom_validate(node_id, ndef, consts, links))
        if errors:
            self.node_errors.setdefault(node_id, []).extend(errors)
        self.plan_nodes[node_id] = PlanNode(node_id, ndef, consts, links)
        return sources

    def _check_link(self, node_id, name, ispec, link, errors, hook_owns_types=False) -> tuple[str, int] | None:
        if link.node not in self.wf.nodes:
            errors.append(_err("missing_linked_node", f"Input links to node '{link.node}', which is not in the workflow",
                               f"{name}: [{link.node!r}, {link.output!r}]", input_name=name,
                               linked_node=[link.node, link.output]))
            return None
        src_def = self.registry.get(self.wf.nodes[link.node].class_type)
        if src_def is None:
            return (link.node, link.output if isinstance(link.output, int) else 0)  # its own error says why
        index, reason = resolve_output(link, self.wf, self.registry)
        if index is None:
            errors.append(_err("missing_linked_output", f"Input {reason}", f"{name}", input_name=name,
                               linked_node=[link.node, link.output]))
            return None
        received = src_def.output_types[index]
        if not hook_owns_types and not types_compatible(received, ispec.type):
            errors.append(_err("return_type_mismatch", "Return type mismatch between linked nodes",
                               f"{name}, received_type({received}) mismatch input_type({ispec.type})",
                               input_name=name, input_config=ispec.info([]), received_type=received,
                               linked_node=[link.node, index]))
            return None
        return (link.node, index)

    def _check_const(self, name, ispec, val, ndef, errors) -> Any:
        try:
            value = ispec.coerce(val)
        except CoercionError as exc:
            errors.append(_err("invalid_input_type", f"Failed to convert an input value to a {ispec.type} value",
                               f"{name}, {_short(val)}, {exc}", input_name=name, received_value=_short(val),
                               exception_message=str(exc)))
            return MISSING
        if name in ndef.validate_inputs:
            return value  # the node's own validate hook owns this input
        choices = self._resolve_choices(ispec) if hasattr(ispec, "resolve") else None
        problem = ispec.check(value, choices)
        if problem:
            kind, msg = problem
            if kind == "value_not_in_list":
                errors.append(_err(kind, "Value not in list", f"{name}: {msg}", input_name=name,
                                   received_value=value, input_config=None if len(choices) > 20 else ispec.info(choices)))
            else:
                errors.append(_err(kind, msg, name, input_name=name, received_value=_short(value),
                                   input_config=ispec.info()))
            return MISSING
        return value

    def _resolve_choices(self, ispec) -> list:
        key = id(ispec)
        if key not in self._choices:
            self._choices[key] = ispec.resolve(self.env)
        return self._choices[key]

    def _custom_validate(self, node_id: str, ndef: NodeDef, consts: dict, links: dict) -> list[dict]:
        kwargs = self._hook_kwargs(node_id, ndef, consts, links)
        if kwargs is None:
            return []
        try:
            result = ndef.validate(**kwargs)
        except Exception as exc:  # a plugin's hook must not take validation down
            return [_err("exception_during_validation", "Exception when validating node", str(exc),
                         exception_type=type(exc).__name__)]
        if result is None or result is True:
            return []
        first = ndef.validate_inputs[0] if ndef.validate_inputs else None
        items = result.items() if isinstance(result, dict) else [(first, m) for m in (
            result if isinstance(result, list) else [result])]
        # details as ComfyUI writes them: "input - message", or the input alone when the hook
        # said only False (an empty message)
        return [_err("custom_validation_failed", "Custom validation failed for node",
                     f"{name} - {msg}" if name and msg != "" else (name or str(msg)), input_name=name)
                for name, msg in items]

    def _hook_kwargs(self, node_id: str, ndef: NodeDef, consts: dict, links: dict) -> dict | None:
        """What the validate hook is called with; None when it is not called."""
        if not ndef.validate_linked:
            kwargs = {n: consts[n] for n in ndef.validate_inputs if n in consts}
            if len(kwargs) < len(ndef.validate_inputs):
                return None  # a linked input: its value is only known when the node runs
        else:
            # ComfyUI's VALIDATE_INPUTS gets every input it takes that the prompt holds: linked
            # ones as None (their values do not exist yet), hidden ones as at validation time
            kwargs = {}
            for n in ndef.validate_inputs:
                if n in consts:
                    kwargs[n] = consts[n]
                elif n in links:
                    kwargs[n] = None
                elif n in ndef.hidden:
                    kwargs[n] = _hidden_at_validation(ndef.hidden[n].kind, node_id)
        if ndef.validate_types:
            kwargs["input_types"] = types = {}
            for n, (src, i) in links.items():
                src_def = self.registry.get(self.wf.nodes[src].class_type)
                if src_def is not None and 0 <= i < len(src_def.output_types):  # else its own error says why
                    types[n] = src_def.output_types[i]
        if ndef.validate_env:
            kwargs["env"] = self.env
        return kwargs


def _hidden_at_validation(kind: str, node_id: str) -> Any:
    """A hidden input's value before anything runs, as ComfyUI gives VALIDATE_INPUTS: the node
    id, an empty prompt, and nothing for the rest (there is no run yet)."""
    return {"UNIQUE_ID": node_id, "PROMPT": {}}.get(kind)


def _short(value: Any, limit: int = 80) -> Any:
    text = repr(value) if not isinstance(value, str) else value
    if len(text) <= limit:
        return value
    return text[: limit - 3] + "..."
