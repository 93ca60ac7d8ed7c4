"""The executor: validate, key every node, find what the cache already holds, run the rest in
topological order, and tell listeners what happens (ComfyUI's event names and fields)."""

from __future__ import annotations

import heapq
import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import ResultCache, make_key, release_memory
from .calls import Call, brief, call_inputs, call_node, merge_calls
from .context import NodeContext
from .env import Environment
from .errors import ExpansionError, Interrupted, NodeExecutionError, Problem
from .expansion import Blocker, Expansion, is_link
from .progress import ProgressStates
from .validate import Plan, PlanNode, check_expansion, validate
from .workflow import Workflow

log = logging.getLogger("latentgraph.executor")

Listener = Callable[[str, dict], None]


@dataclass
class RunResult:
    """What one run did. ``outputs`` are the UI outputs of output nodes (saved images...);
    ``values`` the output values of the targets, one list per output slot."""

    prompt_id: str
    outputs: dict[str, dict] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    values: dict[str, tuple] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    _listish: dict[str, tuple] = field(default_factory=dict, repr=False)

    def get(self, node_id: str, output: int = 0) -> Any:
        """A target's output value: the value itself, or a list where the node made several."""
        values = self.values[node_id][output]
        if len(values) == 1 and not self._listish.get(node_id, ())[output]:
            return values[0]
        return values

    def as_json(self) -> dict:
        return {"prompt_id": self.prompt_id, "outputs": self.outputs, "executed": self.executed,
                "cached": self.cached, "timings": self.timings}


class Executor:
    """Runs workflows against one registry, keeping a result cache across runs.

    Not re-entrant: concurrent ``run`` calls take turns. ``interrupt()`` may be called from
    any thread; the running node notices it at its next progress tick, or between nodes.
    """

    def __init__(self, registry, env: Environment | None = None, cache: ResultCache | None = None,
                 services: dict | None = None, listeners: tuple = ()):
        self.registry = registry
        self.env = env or Environment()
        self.cache = cache if cache is not None else ResultCache()
        self.services = services if services is not None else {}
        self._listeners: list[Listener] = list(listeners)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._graph_memo: dict = {}

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running workflow (runs take turns, so there is at most one; ``prompt_id``
        is accepted for executors that run several at once)."""
        self._stop.set()

    def release(self) -> None:
        """Drop every cached result (models a loader gave included) and give the memory back
        to the system: what a front door calls when a batch ends or a client asks (/free)."""
        with self._lock:
            self.cache.clear()
            self._graph_memo.clear()
        release_memory()

    def validate(self, wf: Workflow, targets: list[str] | None = None, partial: bool = False) -> Plan:
        return validate(wf, self.registry, self.env, targets, partial, self._graph_memo)

    def run(self, wf: Workflow | dict | str | Path, *, prompt_id: str | None = None,
            targets: list[str] | None = None, extra_data: dict | None = None,
            listener: Listener | None = None, partial: bool = False) -> RunResult:
        """Validate and run. Raises ValidationError (nothing ran), NodeExecutionError or
        Interrupted (the run stopped; the executor stays usable)."""
        wf = _as_workflow(wf)
        plan = self.validate(wf, targets, partial)
        return self.run_plan(plan, prompt_id=prompt_id, extra_data=extra_data, listener=listener)

    def run_plan(self, plan: Plan, *, prompt_id: str | None = None, extra_data: dict | None = None,
                 listener: Listener | None = None) -> RunResult:
        with self._lock:
            self._stop.clear()
            run = _Run(self, plan, prompt_id or str(uuid.uuid4()), extra_data or dict(plan.workflow.extra),
                       [*self._listeners, *([listener] if listener else [])])
            return run.execute()


def _as_workflow(wf: Any) -> Workflow:
    if isinstance(wf, Workflow):
        return wf
    if isinstance(wf, dict):
        return Workflow.from_api(wf)
    return Workflow.load(wf)


class _Run:
    """The state of one run; discarded when it ends, whatever the outcome.

    Scheduling is by demand. The targets are demanded; a demanded node whose result is cached
    is done at once, any other waits for the sources of its strong inputs: every linked input
    but the lazy ones its check has not asked for. Ready nodes run in plan order (a heap keyed
    by position; the nodes an expansion adds sort right after the node that made them), which
    for a plan without lazy inputs or expansions is exactly the plan's topological order. A
    value is kept while a node that has yet to run holds a reference to it (targets' always).
    """

    def __init__(self, ex: Executor, plan: Plan, prompt_id: str, extra_data: dict, listeners: list):
        self.ex, self.plan, self.prompt_id = ex, plan, prompt_id
        self.extra_data = extra_data
        self.listeners = listeners
        self.result = RunResult(prompt_id, warnings=list(plan.warnings))
        self.keys: dict[str, str] = {}
        self.volatile: set[str] = set()
        self.values: dict[str, tuple] = {}  # key -> outputs, while someone still needs them
        self._prompt_api: dict | None = None
        self.nodes: dict[str, PlanNode] = dict(plan.nodes)  # the plan's, then expanded ones
        self.position: dict[str, tuple] = {n: (i,) for i, n in enumerate(plan.nodes)}
        self.display: dict[str, str] = {}  # expanded node -> the node id clients are shown
        self.parent: dict[str, str] = {}  # expanded node -> the node that added it
        self.wf: Workflow | None = None  # the run's copy of the workflow, made by the first expansion
        self.state: dict[str, str] = {}  # "waiting", "ready" or "done"
        self.waiting: dict[str, set[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        self.requested: dict[str, set[str]] = {}  # lazy inputs a node's check asked for
        self.pending: dict[str, list[Call]] = {}  # an expanding node's calls, until its graph ran
        self.held: dict[str, list[str]] = {}  # node -> keys of the values it will read
        self.refs: dict[str, int] = {}
        self.by_key: dict[str, list[str]] = {}
        self.heap: list[tuple[tuple, str]] = []
        self.keep: set[str] = set()
        self.progress = ProgressStates(prompt_id, self.emit, lambda n: (
            self.display.get(n, n), self.parent.get(n), self.real_id(n)))

    def emit(self, kind: str, data: dict) -> None:
        if kind == "progress" and data.get("node") is not None:  # a node's context, a pack's ProgressBar
            self.progress.update(str(data["node"]), data.get("value", 0), data.get("max", 1))
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Interrupted:
                raise
            except Exception:  # a broken listener must not break the run; it is logged
                log.exception("event listener failed on %s", kind)

    def stamp(self, data: dict) -> dict:
        data["timestamp"] = int(time.time() * 1000)
        return data

    def execute(self) -> RunResult:
        plan, res = self.plan, self.result
        self.emit("execution_start", self.stamp({"prompt_id": self.prompt_id}))
        current: PlanNode | None = None
        try:
            for current in plan.nodes.values():
                self._key(current)
            current = None
            # As ComfyUI: every node whose result is in the cache counts as cached, needed or not.
            res.cached = [n for n in plan.nodes if n not in self.volatile and self.keys[n] in self.ex.cache]
            self.emit("execution_cached", self.stamp({"nodes": list(res.cached), "prompt_id": self.prompt_id}))
            self.keep = {self.keys[t] for t in plan.targets}
            self._demand(list(reversed(plan.targets)))
            while self.heap:
                current = self.nodes[heapq.heappop(self.heap)[1]]
                if self.ex._stop.is_set():
                    raise Interrupted(current.id, current.ndef.name)
                self._step(current)
            current = None
            self._check_stuck()
        except Interrupted as exc:
            node_id = exc.node_id or (current.id if current else None)
            class_type = exc.class_type or (current.ndef.name if current else None)
            if node_id in self.parent:  # inside an expansion: the prompt's own node, as ComfyUI reports it
                node_id = self.real_id(node_id)
                class_type = self.nodes[node_id].ndef.name
            self.emit("execution_interrupted", self.stamp({
                "prompt_id": self.prompt_id, "node_id": node_id, "node_type": class_type,
                "executed": list(res.executed)}))
            raise Interrupted(node_id, class_type) from None
        except KeyboardInterrupt:
            self.emit("execution_interrupted", self.stamp({
                "prompt_id": self.prompt_id, "node_id": current.id if current else None,
                "node_type": current.ndef.name if current else None, "executed": list(res.executed)}))
            raise
        except NodeExecutionError as err:
            self.emit("execution_error", self.stamp({
                "prompt_id": self.prompt_id, "node_id": err.node_id, "node_type": err.class_type,
                "executed": list(res.executed), "exception_message": err.exception_message,
                "exception_type": err.exception_type, "traceback": err.traceback,
                "current_inputs": getattr(err, "current_inputs", {}),
                "current_outputs": [n for n in plan.nodes if self.keys.get(n) in self.values]}))
            raise
        finally:
            for t in plan.targets:
                found = self.values.get(self.keys.get(t))
                if found is not None:
                    res.values[t] = found
                    res._listish[t] = tuple(o.is_list for o in plan.nodes[t].ndef.outputs)
            self.values.clear()
        self.emit("execution_success", self.stamp({"prompt_id": self.prompt_id}))
        self.emit("executing", {"node": None, "display_node": None, "prompt_id": self.prompt_id})
        return res

    # -- keys ------------------------------------------------------------------------------
    def _key(self, pnode: PlanNode) -> None:
        ndef = pnode.ndef
        upstream = tuple(sorted((name, self.keys[src], idx) for name, (src, idx) in pnode.links.items()))
        volatile = not ndef.cacheable or any(src in self.volatile for src, _ in pnode.links.values())
        extra: Any = None
        if not ndef.cacheable:
            extra = ("run", self.prompt_id, pnode.id)
        elif ndef.fingerprint is not None:
            if ndef.fingerprint_linked or all(n in pnode.consts for n in ndef.fingerprint_inputs):
                kwargs = self._fingerprint_kwargs(pnode)
                if ndef.fingerprint_env:
                    kwargs["env"] = self.ex.env
                try:
                    extra = ("fp", ndef.fingerprint(**kwargs))
                except Exception as exc:
                    raise self._failure(pnode, exc, {}) from exc
            else:  # a linked input names the file: its identity is only known when it runs
                volatile, extra = True, ("run", self.prompt_id, pnode.id)
        if volatile:
            self.volatile.add(pnode.id)
        key = self.keys[pnode.id] = make_key(ndef.name, ndef.version, pnode.consts, upstream, extra)
        self.by_key.setdefault(key, []).append(pnode.id)

    def _fingerprint_kwargs(self, pnode: PlanNode) -> dict:
        """The fingerprint hook's arguments: constants; with fingerprint_linked (ComfyUI's
        IS_CHANGED) also linked inputs as None and hidden ones, inputs the prompt leaves out
        not given at all."""
        kwargs = {}
        for name in pnode.ndef.fingerprint_inputs:
            if name in pnode.consts:
                kwargs[name] = pnode.consts[name]
            elif name in pnode.links:
                kwargs[name] = None
            elif name in pnode.ndef.hidden:
                kwargs[name] = self._hidden(pnode.ndef.hidden[name].kind, pnode.id)
        return kwargs

    # -- scheduling --------------------------------------------------------------------------
    def _demand(self, stack: list[str]) -> None:
        """Make the nodes on ``stack`` (and what they need) run, or take them from the cache."""
        while stack:
            node_id = stack.pop()
            if self.state.get(node_id) is not None:  # waiting, ready or done already
                continue
            if self._take_cached(node_id):
                self._finish(node_id)
                continue
            pnode = self.nodes[node_id]
            lazy = pnode.ndef.lazy_inputs
            asked = self.requested.get(node_id, ())
            self._wait(node_id, [src for name, (src, _) in pnode.links.items()
                                 if name not in lazy or name in asked], stack)

    def _wait(self, node_id: str, sources: list[str], stack: list[str]) -> None:
        """``node_id`` reads the values of ``sources``: hold them, and wait for those not done."""
        pending = set()
        held = self.held.setdefault(node_id, [])
        for src in sources:
            key = self.keys[src]
            self.refs[key] = self.refs.get(key, 0) + 1
            held.append(key)
            if self.state.get(src) != "done":
                pending.add(src)
                self.dependents.setdefault(src, set()).add(node_id)
                stack.append(src)
        if pending:
            self.state[node_id] = "waiting"
            self.waiting[node_id] = pending
        else:
            self._ready(node_id)

    def _ready(self, node_id: str) -> None:
        self.state[node_id] = "ready"
        heapq.heappush(self.heap, (self.position[node_id], node_id))

    def _finish(self, node_id: str) -> None:
        self.state[node_id] = "done"
        self.progress.finish(node_id)
        for waiter in sorted(self.dependents.pop(node_id, ())):
            left = self.waiting.get(waiter)
            if left is None:
                continue
            left.discard(node_id)
            if not left:
                del self.waiting[waiter]
                self._ready(waiter)

    def _release(self, node_id: str) -> None:
        """``node_id`` has read its inputs: drop the values nobody else still needs."""
        for key in self.held.pop(node_id, ()):
            self.refs[key] -= 1
            if self.refs[key] == 0 and key not in self.keep and self.values.pop(key, None) is not None:
                for other in self.by_key.get(key, ()):
                    if self.state.get(other) == "done":  # asked for again, it comes from the cache or runs
                        del self.state[other]

    def _take_cached(self, node_id: str) -> bool:
        key = self.keys[node_id]
        if key in self.values:  # an identical node ran earlier in this run
            if node_id not in self.result.cached:
                self.result.cached.append(node_id)
                self.emit("execution_cached", self.stamp({"nodes": [node_id], "prompt_id": self.prompt_id}))
            return True
        entry = None if node_id in self.volatile else self.ex.cache.get(key)
        if entry is None:
            return False
        self.values[key] = entry.outputs
        if entry.ui:
            self._show(node_id, entry.ui)
        return True

    def _check_stuck(self) -> None:
        if not self.waiting:
            return
        stuck = sorted(self.waiting, key=lambda n: self.position[n])
        names = ", ".join(f"{n} ({self.nodes[n].ndef.name})" for n in stuck[:6])
        exc = ExpansionError(f"nodes wait on one another and none can run (a dependency cycle made by an "
                             f"expansion): {names}")
        raise self._failure(self.nodes[stuck[0]], exc, {})

    # -- running a node ----------------------------------------------------------------------
    def _step(self, pnode: PlanNode) -> None:
        node_id, key = pnode.id, self.keys[pnode.id]
        if node_id in self.pending:
            self._resolve(pnode, key)
        elif key in self.values:  # an identical node ran earlier in this run
            self.result.cached.append(node_id)
            self.emit("execution_cached", self.stamp({"nodes": [node_id], "prompt_id": self.prompt_id}))
        elif pnode.ndef.lazy_inputs and self._ask_lazy(pnode):
            return  # it waits for the inputs its check asked for, then is asked again
        else:
            calls = self._execute_node(pnode, key)
            if calls is not None:
                self._expand(pnode, calls)
                return
        self._release(node_id)
        self._finish(node_id)

    def _inputs(self, pnode: PlanNode) -> tuple[dict[str, list], set[str]]:
        """The node's input lists; a lazy input not computed (yet) is [None], named in the set."""
        inputs: dict[str, list] = {name: [v] for name, v in pnode.consts.items()}
        missing = set()
        for name, (src, idx) in pnode.links.items():
            found = self.values.get(self.keys[src])
            if found is None and src not in self.volatile:
                # a lazy input not asked for is still given when its value is in the cache (ComfyUI)
                entry = self.ex.cache.get(self.keys[src])
                found = None if entry is None else self.values.setdefault(self.keys[src], entry.outputs)
            if found is None:
                inputs[name] = [None]
                missing.add(name)
            else:
                inputs[name] = found[idx]
        for name, hidden in pnode.ndef.hidden.items():
            inputs[name] = [self._hidden(hidden.kind, pnode.id)]
        return inputs, missing

    def _context(self, pnode: PlanNode) -> NodeContext | None:
        ndef = pnode.ndef
        return NodeContext(pnode.id, ndef.name, self.prompt_id, self.ex.env, self.ex.services,
                           self.emit, self.ex._stop, self.extra_data) if ndef.context_param else None

    def _ask_lazy(self, pnode: PlanNode) -> bool:
        """Call the node's lazy check; True when it asked for inputs not computed yet (the node
        then waits for them)."""
        ndef, node_id = pnode.ndef, pnode.id
        inputs, missing = self._inputs(pnode)
        ctx = self._context(pnode)
        asked: set = set()
        try:
            for kwargs in call_inputs(ndef, inputs):
                if ctx is not None:
                    kwargs[ndef.context_param] = ctx
                answer = ndef.lazy_check(**kwargs)
                asked.update(x for x in (answer if isinstance(answer, (list, tuple)) else ()) if isinstance(x, str))
            wanted = sorted(x for x in asked if x not in inputs or x in missing)
            for name in wanted:
                if name not in pnode.links:
                    raise ExpansionError(f"{ndef.name} asked for its input '{name}', but nothing is connected to it")
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(pnode, exc, inputs) from exc
        if not wanted:
            return False
        self.requested.setdefault(node_id, set()).update(wanted)
        stack: list[str] = []
        self._wait(node_id, [pnode.links[name][0] for name in wanted], stack)
        self._demand(stack)
        return True

    def _execute_node(self, pnode: PlanNode, key: str) -> list[Call] | None:
        """Run the node; its calls when one of them expanded (resolved later), else None."""
        ndef, node_id = pnode.ndef, pnode.id
        self.progress.start(node_id)
        self.emit("executing", {"node": node_id, "display_node": self.display.get(node_id, node_id),
                                "prompt_id": self.prompt_id})
        inputs, _ = self._inputs(pnode)
        ctx = self._context(pnode)
        start = time.perf_counter()
        # a front door's guard (the VRAM manager's) may run the node again, e.g. after freeing memory
        guard = self.ex.services.get("node_guard")

        def run() -> list[Call]:
            return call_node(ndef, inputs, ctx, node_id, lambda b: self._blocked(pnode, b))
        try:
            calls = guard(node_id, ndef.name, run) if guard is not None else run()
            expanded = any(c.expansion is not None for c in calls)
            outputs, ui = (None, None) if expanded else merge_calls(ndef, calls)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(pnode, exc, inputs) from exc
        self.result.timings[node_id] = time.perf_counter() - start
        self.result.executed.append(node_id)
        if expanded:
            return calls
        self._store(pnode, key, outputs, ui)
        return None

    def _store(self, pnode: PlanNode, key: str, outputs: tuple, ui: dict | None, show: bool = True) -> None:
        self.values[key] = outputs
        if pnode.id not in self.volatile and pnode.ndef.cacheable:
            self.ex.cache.put(key, outputs, ui)
        if ui and show:
            self._show(pnode.id, ui)

    def _blocked(self, pnode: PlanNode, blocker: Blocker) -> None:
        """A Blocker with a message reached ``pnode``: said once, as ComfyUI's error message to
        the client (event "execution_blocked"; the server sends it as execution_error), and
        kept as a warning of the run; the run goes on."""
        message = f"Execution Blocked: {blocker.message}"
        self.result.warnings.append(Problem(message, node=pnode.id))
        self.emit("execution_blocked", self.stamp({
            "prompt_id": self.prompt_id, "node_id": pnode.id, "node_type": pnode.ndef.name,
            "executed": list(self.result.executed), "exception_message": message,
            "exception_type": "ExecutionBlocked", "traceback": [], "current_inputs": [], "current_outputs": []}))

    # -- expansions --------------------------------------------------------------------------
    def _expand(self, pnode: PlanNode, calls: list[Call]) -> None:
        """Add the graphs the node's calls returned; it runs again (to resolve its outputs) once
        the nodes its results link to have run. The graphs' output nodes run too."""
        node_id = pnode.id
        if self.wf is None:
            self.wf = Workflow(dict(self.plan.workflow.nodes), self.plan.workflow.source)
        try:
            added: dict[str, PlanNode] = {}
            for call in calls:
                if call.expansion is not None:
                    added.update(check_expansion(self.wf, call.expansion.graph, self.ex.registry, self.ex.env, node_id))
            order = _expansion_order(added, node_id)
            needs = [r[0] for call in calls if call.expansion is not None
                     for r in call.expansion.result if is_link(r)]
            for src in needs:
                if src not in added and src not in self.nodes:
                    raise ExpansionError(f"{pnode.ndef.name}'s result links to node '{src}', which is neither in "
                                         f"its expansion nor in the run")
        except ExpansionError as exc:
            raise self._failure(pnode, exc, {}) from exc
        shown = self.display.get(node_id, node_id)
        for i, new_id in enumerate(order):
            new = added[new_id]
            self.nodes[new_id] = new
            self.position[new_id] = self.position[node_id] + (i,)
            override = self.wf.nodes[new_id].meta.get("override_display_id")
            self.display[new_id] = str(override) if override is not None else shown
            self.parent[new_id] = node_id
            self._key(new)
        self.pending[node_id] = calls
        stack = [n for n in reversed(order) if added[n].ndef.output_node]
        self._wait(node_id, needs, stack)
        self._demand(stack)

    def _resolve(self, pnode: PlanNode, key: str) -> None:
        """The expanded graph ran: the node's outputs are the values its results link to."""
        ndef = pnode.ndef

        def resolve(expansion: Expansion) -> tuple:
            values = []
            for j, (ref, out) in enumerate(zip(expansion.result, ndef.outputs)):
                if not is_link(ref):
                    values.append(ref)
                    continue
                found = self.values.get(self.keys[ref[0]])
                index = int(ref[1])
                if found is None or not 0 <= index < len(found):
                    raise ExpansionError(f"{ndef.name}'s output {j} links to output {index} of node '{ref[0]}', "
                                         f"which has no such output")
                items = found[index]
                if out.is_list:
                    values.append(list(items))
                elif len(items) == 1:
                    values.append(items[0])
                else:
                    raise ExpansionError(f"{ndef.name}'s output {j} ({out.name}) is one value, but it links to "
                                         f"node '{ref[0]}' output {index}, which holds {len(items)}")
            return tuple(values)
        try:
            outputs, ui = merge_calls(ndef, self.pending.pop(pnode.id), resolve)
        except Exception as exc:
            raise self._failure(pnode, exc, {}) from exc
        self._store(pnode, key, outputs, ui, show=False)  # its UI was shown when it expanded

    # -- events and errors -------------------------------------------------------------------
    def _show(self, node_id: str, ui: dict) -> None:
        self.result.outputs[node_id] = ui
        self.emit("executed", {"node": node_id, "display_node": self.display.get(node_id, node_id), "output": ui,
                               "prompt_id": self.prompt_id})

    def real_id(self, node_id: str) -> str:
        """The node of the prompt itself that (through expansions) added ``node_id``."""
        while node_id in self.parent:
            node_id = self.parent[node_id]
        return node_id

    def _failure(self, pnode: PlanNode, exc: BaseException, inputs: dict) -> NodeExecutionError:
        """The error of a node that raised. A node an expansion added is reported as the prompt's
        node that expanded (ComfyUI's real_node_id: the one a client can show); the node that
        raised is named in ``expanded_node``."""
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        real = self.real_id(pnode.id)
        err = NodeExecutionError(real, self.nodes[real].ndef.name, exc, lines, self.plan.workflow.source,
                                 (pnode.id, pnode.ndef.name) if real != pnode.id else None)
        err.current_inputs = {k: [brief(v) for v in vals] for k, vals in inputs.items()}
        return err

    def _hidden(self, kind: str, node_id: str) -> Any:
        if kind == "UNIQUE_ID":
            return node_id
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if self._prompt_api is None:
            self._prompt_api = self.plan.workflow.to_api(self.ex.registry)
        return self._prompt_api


def _expansion_order(added: dict[str, PlanNode], parent: str) -> list[str]:
    """The added nodes in a topological order (links among them first); a cycle is an error."""
    order: list[str] = []
    mark: dict[str, int] = {}
    for start in added:
        stack = [(start, iter(src for src, _ in added[start].links.values()))]
        if mark.get(start):
            continue
        mark[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next((s for s in it if s in added and mark.get(s) != 2), None)
            if nxt is None:
                stack.pop()
                mark[node] = 2
                order.append(node)
            elif mark.get(nxt) == 1:
                raise ExpansionError(f"node '{parent}' expanded into a graph with a cycle through node '{nxt}'")
            else:
                mark[nxt] = 1
                stack.append((nxt, iter(src for src, _ in added[nxt].links.values())))
    return order


def ui_files(ui: dict) -> list[dict]:
    """The file entries ({filename, subfolder, type}) a node's UI output names, under any key
    (images, gifs, audio, ...)."""
    return [item for items in (ui.values() if isinstance(ui, dict) else ())
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and "filename" in item]
