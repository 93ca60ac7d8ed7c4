"""ComfyUI's V3 node classes (``comfy_api.latest.io.ComfyNode``) read into latentgraph NodeDefs.

A V3 node declares itself with ``define_schema() -> io.Schema`` and runs as the classmethod
``execute(**inputs) -> io.NodeOutput``; a pack hands its classes over either in
``NODE_CLASS_MAPPINGS`` or from ``async def comfy_entrypoint() -> ComfyExtension`` whose
``get_node_list()`` lists them (registered under each schema's ``node_id``). As ComfyUI does,
each input is translated through its V1 form (``(type, options)``, the same reader as V1
nodes: :func:`latentgraph.plugins.comfy_v1._spec`), and ``/object_info`` shows the schema's V1
form (``Schema.get_v1_info``), read afresh each time so that file lists stay current.

What carries over: required/optional inputs with their options, lazy inputs and
``check_lazy_status``, ``hidden=[io.Hidden.unique_id, ...]`` read through ``cls.hidden`` (the
node is called on a subclass holding them, as ComfyUI calls it on a clone), ``is_input_list``,
``is_output_list``, ``is_output_node``, ``not_idempotent`` (the node id joins the cache key, so
identical nodes do not share a result), ``fingerprint_inputs`` (ComfyUI's IS_CHANGED rule),
``validate_inputs`` (V1's VALIDATE_INPUTS rule, failures reported per input), async methods,
and results as ``NodeOutput(*values, ui=..., expand=..., block_execution=...)``, a tuple, a
V1-style dict, None or an ExecutionBlocker. ``NodeOutput(block_execution=msg)`` blocks every
output with ``msg`` (ComfyUI 0.3.64 drops such a result when it has no values; this is what it
is meant to do).
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import dataclasses
import inspect
import logging
import math
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..comfy_compat.runtime import node_call
from ..graph.declare import NodeDef
from ..graph.errors import DeclarationError
from ..graph.expansion import Blocker
from ..graph.types import HIDDEN_KINDS, Combo, Hidden, InputSpec, Output
from .comfy_v1 import CONTEXT, _result, _spec, _validate_inputs, as_comfy_samplers

log = logging.getLogger("latentgraph.plugins")


def _hidden_key(kind: str) -> str:
    """The keyword a hidden value reaches the wrappers under (never an input id a pack uses)."""
    return f"__v3_hidden_{kind}__"


def is_v3(cls: Any) -> bool:
    return inspect.isclass(cls) and callable(getattr(cls, "define_schema", None))


def _own(cls: type, name: str):
    """``cls.name`` when a class below the V3 base defines it, else None (the base's
    placeholder): how ComfyUI tells the hooks a node wrote from those it did not."""
    base = cls.GET_BASE_CLASS() if callable(getattr(cls, "GET_BASE_CLASS", None)) else None
    placeholder = getattr(getattr(base, name, None), "__func__", None)
    for klass in cls.__mro__:
        if klass is base:
            return None
        if name in klass.__dict__:
            found = getattr(cls, name)
            return None if getattr(found, "__func__", found) is placeholder else found
    return None


def read_schema(cls: type, where: str):
    """The finalised, checked schema of V3 class ``cls`` (ComfyUI's GET_SCHEMA)."""
    for hook in ("define_schema", "execute"):
        if _own(cls, hook) is None:
            raise DeclarationError(f"{where}: No {hook} function was defined for node class {cls.__name__}.")
    try:
        schema = cls.define_schema()
    except Exception as exc:
        raise DeclarationError(f"{where}: define_schema() raised {type(exc).__name__}: {exc}") from exc
    if not all(hasattr(schema, a) for a in ("node_id", "finalize", "validate", "get_v1_info")):
        raise DeclarationError(f"{where}: define_schema() must return an io.Schema, got {type(schema).__name__}")
    if not isinstance(schema.node_id, str) or not schema.node_id or any(c in schema.node_id for c in "\n\r\t"):
        raise DeclarationError(f"{where}: the schema's node_id must be a name, got {schema.node_id!r}")
    schema.finalize()
    try:
        schema.validate()
    except ValueError as exc:
        raise DeclarationError(f"{where}: {exc}") from exc
    for item in schema.inputs or ():
        if not (hasattr(item, "as_dict") and hasattr(item, "get_io_type") and isinstance(getattr(item, "id", None), str)):
            raise DeclarationError(f"{where}: schema input {item!r} is not an io input (e.g. io.Int.Input(\"steps\"))")
    return schema


def v1_info(cls: type, schema) -> dict:
    """The schema's /object_info entry as ComfyUI 0.3.64 gives it (NodeInfoV1, every field)."""
    info = schema.get_v1_info(cls)
    return dataclasses.asdict(info) if dataclasses.is_dataclass(info) else dict(info)


@dataclasses.dataclass
class V3NodeDef(NodeDef):
    """A NodeDef whose /object_info entry is its V3 schema's V1 form, read afresh."""

    v3_class: Any = None
    node_id: str = ""
    info_at_load: dict = dataclasses.field(default_factory=dict)

    def object_info(self, env=None) -> dict:
        try:
            info = v1_info(self.v3_class, read_schema(self.v3_class, self.name))
        except DeclarationError as exc:  # ComfyUI leaves such a node out; here it keeps what it had
            log.warning("%s; /object_info shows the schema read at load", exc)
            info = copy.deepcopy(self.info_at_load)
        info["python_module"] = self.python_module
        if self.name != self.node_id:  # registered under another name (a mapping key, or pack/Name)
            info["name"], info["display_name"] = self.name, self.display_name
        return info


def _input_spec(where: str, item) -> InputSpec:
    """One schema input through its V1 entry; a MultiType over a widget stays that widget,
    typed with the whole union; a combo without a list of choices (the frontend fetches them
    from a route) takes any value, unchecked here."""
    options = item.as_dict()
    optional = bool(options.pop("optional", False))
    io_type = item.get_io_type()
    override = getattr(item, "input_override", None)
    if io_type == "COMBO" and options.get("options") is None:  # choices the frontend fetches (remote)
        return dataclasses.replace(_spec(where, item.id, ("STRING", options), optional), type="COMBO")
    if override is not None and getattr(override, "widget_type", None):
        spec = _spec(where, item.id, (override.widget_type, options), optional)
        return dataclasses.replace(spec, type=str(io_type))
    return _spec(where, item.id, (io_type if isinstance(io_type, list) else str(io_type), options), optional)


def _fresh_choices(cls: type, input_id: str, fallback: list):
    """A combo's choices as ``define_schema`` gives them now (ComfyUI reads the schema at each
    validation: a model file added since loading is a valid choice)."""
    def choices(env=None) -> list:
        try:
            schema = cls.define_schema()
        except Exception as exc:  # the node worked when loaded: keep its first list, say why
            log.warning("%s: define_schema() raised %s: %s; using the choices read at load", cls.__name__,
                        type(exc).__name__, exc)
            return list(fallback)
        for item in schema.inputs or ():
            if getattr(item, "id", None) == input_id:
                return list(getattr(item, "options", None) or [])
        return list(fallback)
    return choices


def _await(value: Any) -> Any:
    """``value``, awaited when it is awaitable (async execute, comfy_entrypoint): on a loop of
    its own, in a worker thread when this thread already runs a loop."""
    if not inspect.isawaitable(value):
        return value

    async def wait():
        return await value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wait())
    context = contextvars.copy_context()  # the running node (node_call) stays visible
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, asyncio.run, wait()).result()


class _Runner:
    """The hooks the executor calls. Each takes the hidden values out of its keywords and calls
    the node's classmethod on a subclass whose ``hidden`` holds them (ComfyUI calls a clone of
    the class the same way)."""

    def __init__(self, cls: type, schema, name: str, n_outputs: int):
        self.cls, self.name, self.n = cls, name, n_outputs
        self.expandable, self.not_idempotent = bool(schema.enable_expand), bool(schema.not_idempotent)
        self.kinds = [str(getattr(h, "value", h)) for h in schema.hidden or ()]
        self.keys = {_hidden_key(k): k for k in self.kinds if k in HIDDEN_KINDS}
        self.internal: set[str] = set()  # keys the hooks use themselves (the node id of not_idempotent)
        self.samplers: list[str] = []  # SAMPLER inputs, given as the layer's KSAMPLER
        self.holder_type = getattr(inspect.getmodule(type(schema)), "HiddenHolder", None)

    def clone(self, kwargs: dict) -> type:
        """Take the hidden values out of ``kwargs``; the class to call, holding them."""
        values = {kind: None for kind in self.kinds}
        for key, kind in self.keys.items():
            values[kind] = kwargs.pop(key, None)
        for key in self.internal:
            kwargs.pop(key, None)
        holder = self.holder_type.from_dict(values) if self.holder_type is not None else None
        return type(self.cls.__name__, (self.cls,), {"hidden": holder, "__module__": self.cls.__module__,
                                                     "__qualname__": self.cls.__qualname__})

    def call(self, **kwargs):
        ctx = kwargs.pop(CONTEXT)
        clone = self.clone(kwargs)
        as_comfy_samplers(kwargs, self.samplers)
        with node_call(ctx):  # ComfyUI's module functions (ProgressBar, interrupts) find the node here
            ret = _await(clone.execute(**kwargs))
        return _node_output(self.name, ret, self.n, self.expandable)

    def check_lazy(self, **kwargs):
        ctx = kwargs.pop(CONTEXT)
        clone = self.clone(kwargs)
        with node_call(ctx):
            return _await(clone.check_lazy_status(**kwargs))

    def fingerprint(self, **kwargs):
        """(the node id when not_idempotent, fingerprint_inputs' value): the cache key's part."""
        node = kwargs.pop(_hidden_key("UNIQUE_ID"), None) if self.not_idempotent else None
        if _own(self.cls, "fingerprint_inputs") is None:
            return (node, None)
        return (node, _changed(self.name, self.clone({}), kwargs))  # ComfyUI gives it no hidden values

    def validate(self, **kwargs):
        clone = self.clone(kwargs)
        given = [k for k in kwargs if k != "input_types"]
        return _report(_await(clone.validate_inputs(**kwargs)), given)


def _node_output(name: str, ret: Any, n: int, expandable: bool) -> Any:
    """A V3 return value as latentgraph's Result/Expansion/Blocker (ComfyUI's normalising, then
    the V1 reader)."""
    if ret is None:
        return _result(name, (), n) if n == 0 else _fail(name, "None", n)
    if isinstance(ret, Blocker):
        return _result(name, {"result": ret}, n)
    if isinstance(ret, tuple):
        return _result(name, ret, n)
    if isinstance(ret, dict):  # ComfyUI reads it as NodeOutput.from_dict: the same expand rule
        _check_expand(name, "expand" in ret, expandable)
        return _result(name, ret, n)
    if not all(hasattr(ret, a) for a in ("args", "ui", "expand", "block_execution")):
        raise TypeError(f"{name}: Invalid return type from node: {type(ret)} (return io.NodeOutput(...))")
    ui = ret.ui if ret.ui is None or isinstance(ret.ui, dict) else ret.ui.as_dict()
    _check_expand(name, ret.expand is not None, expandable)
    result: Any = tuple(ret.args)
    if ret.block_execution is not None:
        result = Blocker(ret.block_execution)
    v1 = {"ui": ui, "result": result}
    if ret.expand is not None:
        v1["expand"] = ret.expand
    return _result(name, v1, n)


def _check_expand(name: str, expands: bool, expandable: bool) -> None:
    if expands and not expandable:
        raise TypeError(f"Node {name} is not expandable, but expand included in NodeOutput; developer should "
                        f"set enable_expand=True on node's Schema to allow this.")


def _fail(name: str, what: str, n: int):
    raise TypeError(f"{name} returned {what} but declares {n} outputs (return io.NodeOutput(value, ...))")


def _changed(name: str, clone, kwargs: dict) -> Any:
    """fingerprint_inputs' value for the cache key; as ComfyUI's IS_CHANGED, a failure or NaN
    means "run every time"."""
    try:
        value = _await(clone.fingerprint_inputs(**kwargs))
    except Exception as exc:
        log.warning("%s: fingerprint_inputs raised %s: %s; the node runs every time", name, type(exc).__name__, exc)
        return ("always", uuid.uuid4().hex)
    if isinstance(value, float) and math.isnan(value):
        return ("always", uuid.uuid4().hex)
    return repr(value)


def _report(result: Any, given: list[str]) -> dict | None:
    """validate_inputs' answer as {input: message}: anything but True (or a blocker) fails, once
    per input it was given (comfy_v1's rule for VALIDATE_INPUTS)."""
    if result is True or isinstance(result, Blocker):
        return None
    message = "" if result is False else str(result)
    if not given:
        return {None: message or "validate_inputs returned False"}
    return {n: message for n in given}


def _read_inputs(cls: type, where: str, schema) -> dict[str, InputSpec]:
    inputs: dict[str, InputSpec] = {}
    for item in schema.inputs or ():
        spec = _input_spec(where, item)
        if isinstance(spec, Combo):
            spec = dataclasses.replace(spec, choices=_fresh_choices(cls, item.id, list(spec.resolve(None))))
        inputs[item.id] = spec
    return inputs


def _read_outputs(schema) -> tuple[Output, ...]:
    """The outputs; a combo output (its type is its list of choices) is a COMBO, as in V1."""
    outputs = []
    for out in schema.outputs or ():
        kind = "COMBO" if isinstance(out.io_type, list) else str(out.io_type)
        outputs.append(Output(kind, str(out.display_name or kind), bool(out.is_output_list), out.tooltip or None))
    return tuple(outputs)


def node_def(name: str | None, cls: Any, display_name: str | None, *, pack: str, source: str) -> V3NodeDef:
    """The NodeDef of V3 node class ``cls``, registered as ``name`` (None: the schema's node_id)."""
    where = f"{name or getattr(cls, '__name__', cls)} (class {getattr(cls, '__qualname__', cls)!s})"
    if not inspect.isclass(cls):
        raise DeclarationError(f"{where}: a V3 node must be a class (io.ComfyNode), got {type(cls).__name__}")
    schema = read_schema(cls, where)
    name = name or schema.node_id
    cls.RELATIVE_PYTHON_MODULE = f"custom_nodes.{pack}"  # as ComfyUI sets it on the classes it loads
    inputs, outputs = _read_inputs(cls, where, schema), _read_outputs(schema)
    runner = _Runner(cls, schema, name, len(outputs))
    runner.samplers = [n for n, spec in inputs.items() if spec.type == "SAMPLER"]
    hidden = {key: Hidden(kind) for key, kind in runner.keys.items()}
    fp_hook, v_hook = _own(cls, "fingerprint_inputs"), _own(cls, "validate_inputs")
    fp_inputs: tuple = _validate_inputs(fp_hook, inputs, {})[0] if fp_hook is not None else ()
    if schema.not_idempotent:  # the node id joins the cache key through the fingerprint
        uid = _hidden_key("UNIQUE_ID")
        hidden.setdefault(uid, Hidden("UNIQUE_ID"))
        runner.internal.add(uid)
        fp_inputs += (uid,)
    v_inputs, wants_types = _validate_inputs(v_hook, inputs, {}) if v_hook is not None else ((), False)
    if v_hook is not None:
        v_inputs += tuple(runner.keys)  # cls.hidden holds the node id (and an empty prompt) meanwhile
    return V3NodeDef(
        name=name, fn=runner.call, inputs=inputs, outputs=outputs, hidden=hidden,
        category=str(schema.category or ""), display_name=str(schema.display_name or display_name or name),
        description=str(schema.description or ""), output_node=bool(schema.is_output_node),
        fingerprint=runner.fingerprint if fp_hook is not None or schema.not_idempotent else None,
        fingerprint_inputs=fp_inputs, fingerprint_linked=True,
        validate=runner.validate if v_hook is not None else None, validate_inputs=v_inputs, validate_linked=True,
        validate_types=wants_types, input_is_list=bool(schema.is_input_list),
        deprecated=bool(schema.is_deprecated), experimental=bool(schema.is_experimental),
        python_module=f"custom_nodes.{pack}", context_param=CONTEXT, source=source,
        lazy_check=runner.check_lazy if _own(cls, "check_lazy_status") is not None else None,
        v3_class=cls, node_id=schema.node_id, info_at_load=v1_info(cls, schema))


def extension_nodes(entrypoint: Any) -> list:
    """The node classes of a pack's ``comfy_entrypoint``: the extension it returns is loaded
    (``on_load``) and asked for ``get_node_list()``."""
    if not callable(entrypoint):
        raise DeclarationError(f"comfy_entrypoint must be a function, got {type(entrypoint).__name__}")
    extension = _await(entrypoint())
    if not callable(getattr(extension, "get_node_list", None)):
        raise DeclarationError(f"comfy_entrypoint() must return a ComfyExtension, got {type(extension).__name__}")
    if callable(getattr(extension, "on_load", None)):
        _await(extension.on_load())
    found = _await(extension.get_node_list())
    if not isinstance(found, list):
        raise DeclarationError(f"get_node_list() must return a list of node classes, got {type(found).__name__}")
    return found
