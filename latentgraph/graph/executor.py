"""The executor: validate, key every node, find what the cache already holds, run the rest in
topological order, and tell listeners what happens (ComfyUI's event names and fields)."""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .cache import CacheEntry, ResultCache, make_key, release_memory
from .context import NodeContext
from .declare import NodeDef, Result
from .env import Environment
from .errors import Interrupted, NodeExecutionError, Problem
from .validate import Plan, PlanNode, validate
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
    """The state of one run; discarded when it ends, whatever the outcome."""

    def __init__(self, ex: Executor, plan: Plan, prompt_id: str, extra_data: dict, listeners: list):
        self.ex, self.plan, self.prompt_id = ex, plan, prompt_id
        self.extra_data = extra_data
        self.listeners = listeners
        self.result = RunResult(prompt_id, warnings=list(plan.warnings))
        self.keys: dict[str, str] = {}
        self.volatile: set[str] = set()
        self.values: dict[str, tuple] = {}  # key -> outputs, while someone still needs them
        self._prompt_api: dict | None = None

    def emit(self, kind: str, data: dict) -> None:
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
            to_run, hits = self._schedule()
            # As ComfyUI: every node whose result is in the cache counts as cached, needed or not.
            res.cached = [n for n in plan.nodes if n in hits or (
                n not in to_run and n not in self.volatile and self.keys[n] in self.ex.cache)]
            self.emit("execution_cached", self.stamp({"nodes": list(res.cached), "prompt_id": self.prompt_id}))
            refs = self._refcounts(to_run)
            keep = {self.keys[t] for t in plan.targets}
            for node_id, entry in hits.items():
                self.values[self.keys[node_id]] = entry.outputs
                if entry.ui:
                    self._show(node_id, entry.ui)
            for node_id, pnode in plan.nodes.items():
                if node_id not in to_run:
                    continue
                current = pnode
                if self.ex._stop.is_set():
                    raise Interrupted(node_id, pnode.ndef.name)
                key = self.keys[node_id]
                if key in self.values:  # an identical node ran earlier in this run
                    res.cached.append(node_id)
                    self.emit("execution_cached", self.stamp({"nodes": [node_id], "prompt_id": self.prompt_id}))
                else:
                    self._execute_node(pnode, key)
                for src, _ in pnode.links.values():
                    skey = self.keys[src]
                    refs[skey] -= 1
                    if refs[skey] == 0 and skey not in keep:
                        self.values.pop(skey, None)
            current = None
        except Interrupted as exc:
            node_id = exc.node_id or (current.id if current else None)
            class_type = exc.class_type or (current.ndef.name if current else None)
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

    def _key(self, pnode: PlanNode) -> None:
        ndef = pnode.ndef
        upstream = tuple(sorted((name, self.keys[src], idx) for name, (src, idx) in pnode.links.items()))
        volatile = not ndef.cacheable or any(src in self.volatile for src, _ in pnode.links.values())
        extra: Any = None
        if not ndef.cacheable:
            extra = ("run", self.prompt_id, pnode.id)
        elif ndef.fingerprint is not None:
            if all(n in pnode.consts for n in ndef.fingerprint_inputs):
                kwargs = {n: pnode.consts[n] for n in ndef.fingerprint_inputs}
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
        self.keys[pnode.id] = make_key(ndef.name, ndef.version, pnode.consts, upstream, extra)

    def _schedule(self) -> tuple[set[str], dict[str, CacheEntry]]:
        """Walk back from the targets: a node runs if its result is not cached and something
        that runs (or a target) needs it."""
        needed = set(self.plan.targets)
        to_run: set[str] = set()
        hits: dict[str, CacheEntry] = {}
        cache = self.ex.cache
        for node_id in reversed(self.plan.nodes):
            if node_id not in needed:
                continue
            entry = None if node_id in self.volatile else cache.get(self.keys[node_id])
            if entry is not None:
                hits[node_id] = entry
                continue
            to_run.add(node_id)
            needed.update(src for src, _ in self.plan.nodes[node_id].links.values())
        return to_run, hits

    def _refcounts(self, to_run: set[str]) -> dict[str, int]:
        refs: dict[str, int] = {}
        for node_id in to_run:
            for src, _ in self.plan.nodes[node_id].links.values():
                key = self.keys[src]
                refs[key] = refs.get(key, 0) + 1
        return refs

    def _show(self, node_id: str, ui: dict) -> None:
        self.result.outputs[node_id] = ui
        self.emit("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id})

    def _execute_node(self, pnode: PlanNode, key: str) -> None:
        ndef, node_id = pnode.ndef, pnode.id
        self.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id})
        inputs: dict[str, list] = {name: [v] for name, v in pnode.consts.items()}
        for name, (src, idx) in pnode.links.items():
            inputs[name] = self.values[self.keys[src]][idx]
        for name, hidden in ndef.hidden.items():
            inputs[name] = [self._hidden(hidden.kind, node_id)]
        ctx = NodeContext(node_id, ndef.name, self.prompt_id, self.ex.env, self.ex.services,
                          self.emit, self.ex._stop) if ndef.context_param else None
        start = time.perf_counter()
        # a front door's guard (the VRAM manager's) may run the node again, e.g. after freeing memory
        guard = self.ex.services.get("node_guard")
        try:
            if guard is not None:
                outputs, ui = guard(node_id, ndef.name, lambda: _map_over_lists(ndef, inputs, ctx))
            else:
                outputs, ui = _map_over_lists(ndef, inputs, ctx)
        except (Interrupted, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise self._failure(pnode, exc, inputs) from exc
        self.result.timings[node_id] = time.perf_counter() - start
        self.result.executed.append(node_id)
        self.values[key] = outputs
        if node_id not in self.volatile and ndef.cacheable:
            self.ex.cache.put(key, outputs, ui)
        if ui:
            self._show(node_id, ui)

    def _failure(self, pnode: PlanNode, exc: BaseException, inputs: dict) -> NodeExecutionError:
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        err = NodeExecutionError(pnode.id, pnode.ndef.name, exc, lines, self.plan.workflow.source)
        err.current_inputs = {k: [_brief(v) for v in vals] for k, vals in inputs.items()}
        return err

    def _hidden(self, kind: str, node_id: str) -> Any:
        if kind == "UNIQUE_ID":
            return node_id
        if kind == "EXTRA_PNGINFO":
            return self.extra_data.get("extra_pnginfo")
        if self._prompt_api is None:
            self._prompt_api = self.plan.workflow.to_api(self.ex.registry)
        return self._prompt_api


def ui_files(ui: dict) -> list[dict]:
    """The file entries ({filename, subfolder, type}) a node's UI output names, under any key
    (images, gifs, audio, ...)."""
    return [item for items in (ui.values() if isinstance(ui, dict) else ())
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and "filename" in item]


def _map_over_lists(ndef: NodeDef, inputs: dict[str, list], ctx) -> tuple[tuple, dict | None]:
    """Call the node once (input_is_list, or every input a single value) or once per index
    of the longest input list, shorter lists repeating their last item (ComfyUI's rule)."""
    if ndef.input_is_list:
        calls = [inputs]
    else:
        sizes = [len(v) for v in inputs.values()]
        n = max(sizes, default=1)
        if n == 1:
            calls = [{k: v[0] for k, v in inputs.items()}]
        elif 0 in sizes:
            calls = []
        else:
            calls = [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(n)]
    outputs: tuple = tuple([] for _ in ndef.outputs)
    ui: dict | None = None
    for kwargs in calls:
        if ctx is not None:
            kwargs[ndef.context_param] = ctx
        values, part_ui = _normalise(ndef, ndef.fn(**kwargs))
        for j, out in enumerate(ndef.outputs):
            if out.is_list:
                outputs[j].extend(values[j])
            else:
                outputs[j].append(values[j])
        if part_ui:
            ui = _merge_ui(ui or {}, part_ui, ndef.name)
    return outputs, ui


def _merge_ui(ui: dict, part: Any, name: str) -> dict:
    """Add one call's UI output to the node's: as ComfyUI, each key's items are concatenated
    over the calls of a per-item run, whatever sequence held them (a tuple such as
    ``"animated": (True,)`` is as good as a list). A value that is no sequence counts as one
    item rather than being split up (a string) or overwritten by the next call."""
    if not isinstance(part, dict):
        raise TypeError(f"{name} returned a ui of type {type(part).__name__}; "
                        f"it must be a dict of lists such as {{'images': [...]}}")
    for key, value in part.items():
        items = ui.setdefault(key, [])
        if isinstance(value, (list, tuple)):
            items.extend(value)
        else:
            items.append(value)
    return ui


def _normalise(ndef: NodeDef, ret: Any) -> tuple[tuple, dict | None]:
    n = len(ndef.outputs)
    ui = None
    if isinstance(ret, Result):
        values, ui = ret.values, ret.ui
    elif n == 0:
        if ret is not None:
            raise TypeError(f"{ndef.name} declares no outputs but returned {type(ret).__name__}; "
                            f"return Result(ui=...) or None")
        values = ()
    elif n == 1:
        values = (ret,)
    elif isinstance(ret, (tuple, list)):
        values = tuple(ret)
    else:
        raise TypeError(f"{ndef.name} declares {n} outputs but returned one {type(ret).__name__}")
    if len(values) != n:
        raise TypeError(f"{ndef.name} returned {len(values)} values but declares {n} outputs")
    for j, out in enumerate(ndef.outputs):
        if out.is_list and not isinstance(values[j], list):
            raise TypeError(f"{ndef.name}: output {j} ({out.name}) is a list output; return a list")
    return values, ui


def _brief(value: Any) -> str:
    if isinstance(value, (int, float, bool, str)) or value is None:
        text = repr(value)
    elif hasattr(value, "shape"):
        text = f"{type(value).__name__}{tuple(value.shape)}"
    else:
        text = type(value).__name__
    return text if len(text) < 200 else text[:197] + "..."
