"""ComfyUI's V1 node classes (``INPUT_TYPES``, ``RETURN_TYPES``, ``FUNCTION``, ...) read into
latentgraph NodeDefs, so node packs written for ComfyUI run here when they need only torch,
numpy and PIL.

What carries over: required/optional/hidden inputs (INT, FLOAT, STRING, BOOLEAN, combos as a
list or ``("COMBO", {"options": [...]})``, any other type as a socket, with their options),
``RETURN_TYPES``/``RETURN_NAMES``/``OUTPUT_IS_LIST``/``OUTPUT_TOOLTIPS``, ``FUNCTION``,
``CATEGORY``, ``DESCRIPTION``, ``OUTPUT_NODE``, ``INPUT_IS_LIST``, ``DEPRECATED``,
``EXPERIMENTAL``, ``IS_CHANGED`` (its value joins the cache key; NaN means "always run"),
``VALIDATE_INPUTS`` (as in ComfyUI: the inputs it takes skip the built-in checks, linked ones
are given as None, hidden ones too, ``input_types`` when it asks; anything but True fails, once
per input it was given), lazy inputs (``"lazy": True`` and ``check_lazy_status``), node
expansion (``{"expand": graph, "result": (...)}``), ``ExecutionBlocker`` results, and return
values as tuples or ``{"ui": ..., "result": (...)}`` (a per-item run's ui lists are
concatenated). As in ComfyUI one instance of the class is made per node id and kept.
``IS_CHANGED`` is called with the inputs it takes that the prompt sets, linked ones as None
(ComfyUI's rule); if it raises, the node runs every time, with a warning. V3 ``comfy_api``
nodes are read by :mod:`latentgraph.plugins.comfy_v3`.
"""

from __future__ import annotations

import inspect
import logging
import math
import uuid
from typing import Any

from ..comfy_compat.runtime import node_call
from ..graph.declare import NodeDef, Result
from ..graph.expansion import Blocker, Expansion
from ..graph.errors import DeclarationError
from ..graph.types import HIDDEN_KINDS, Boolean, Combo, Float, Hidden, InputSpec, Int, Output, Socket, String

CONTEXT = "__latentgraph_ctx__"
log = logging.getLogger("latentgraph.plugins")
_NUMBER_KEYS = ("min", "max", "step", "display")


def _options(raw: Any) -> dict:
    return dict(raw) if isinstance(raw, dict) else {}


def _spec(node: str, name: str, entry: Any, optional: bool) -> InputSpec:
    """One V1 input entry, ``(TYPE,)`` or ``(TYPE, {options})``, as an InputSpec."""
    if isinstance(entry, str):
        entry = (entry,)
    if not isinstance(entry, (tuple, list)) or not entry:
        raise DeclarationError(f"{node}: input '{name}' must be a tuple (TYPE, {{options}}), got {entry!r}")
    kind, opts = entry[0], _options(entry[1] if len(entry) > 1 else None)
    default = opts.pop("default", inspect.Parameter.empty)
    tooltip = opts.pop("tooltip", None)
    common = {"optional": optional, "tooltip": tooltip}
    if default is not inspect.Parameter.empty:
        common["default"] = default
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        choices = kind if isinstance(kind, (list, tuple)) else opts.pop("options", [])
        upload = bool(opts.pop("image_upload", False))
        return Combo(list(choices), image_upload=upload, extra=opts, **common)
    if not isinstance(kind, str):
        raise DeclarationError(f"{node}: input '{name}' has type {kind!r}; expected a type name or a list of choices")
    if kind == "INT":
        numbers = {k: opts.pop(k) for k in _NUMBER_KEYS if k in opts}
        control = bool(opts.pop("control_after_generate", False))
        return Int(**numbers, control_after_generate=control, extra=opts, **common)
    if kind == "FLOAT":
        numbers = {k: opts.pop(k) for k in _NUMBER_KEYS if k in opts}
        rounding = opts.pop("round", None)
        return Float(**numbers, round=rounding, extra=opts, **common)
    if kind == "STRING":
        return String(multiline=bool(opts.pop("multiline", False)), placeholder=opts.pop("placeholder", None),
                      dynamic_prompts=opts.pop("dynamicPrompts", None), extra=opts, **common)
    if kind == "BOOLEAN":
        return Boolean(label_on=opts.pop("label_on", None), label_off=opts.pop("label_off", None), extra=opts,
                       **common)
    common.pop("default", None)
    return Socket(kind, extra=opts, **common)


def _hook_inputs(fn, inputs: dict[str, InputSpec]) -> tuple[tuple[str, ...], bool, bool]:
    """(the inputs a classmethod hook takes, whether it takes **kwargs, whether it wants input_types)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return (), False, False
    kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if kwargs:  # ComfyUI gives it every constant input
        named = tuple(n for n, s in inputs.items() if s.widget)
    else:
        named = tuple(n for n in params if n in inputs)
    return named, kwargs, "input_types" in params


def _validate_inputs(fn, inputs: dict[str, InputSpec], hidden: dict) -> tuple[tuple[str, ...], bool]:
    """(the inputs VALIDATE_INPUTS is given, whether it asks for input_types). As ComfyUI: with
    **kwargs every input and hidden input; else those it names, hidden ones included."""
    named, kwargs, wants_types = _hook_inputs(fn, inputs)
    if kwargs:
        return (*inputs, *hidden), wants_types
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return named, wants_types
    return named + tuple(n for n in params if n in hidden), wants_types


def _validator(checker, names: tuple[str, ...], unknown_hidden: list[str]):
    """VALIDATE_INPUTS wrapped as a validate hook. As ComfyUI, anything but True fails (None
    too), and the failure is reported once per input the hook was given: {input: message},
    the message empty when it returned False."""
    takes_all = any(p.kind is p.VAR_KEYWORD for p in _parameters(checker))
    params = {p.name for p in _parameters(checker)}
    extra = [h for h in unknown_hidden if takes_all or h in params]  # e.g. AUTH_TOKEN_COMFY_ORG: None

    def validate(**kwargs):
        for hname in extra:
            kwargs.setdefault(hname, None)
        result = checker(**kwargs)
        if result is True:
            return None
        message = "" if result is False else str(result)
        given = [n for n in kwargs if n != "input_types"]
        if not given:  # ComfyUI drops this failure silently; here it is reported, with no input
            return {None: message or "VALIDATE_INPUTS returned False"}
        return {n: message for n in given}

    return validate


def _parameters(fn) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []


def node_def(name: str, cls: Any, display_name: str | None, *, pack: str, source: str) -> NodeDef:
    """The NodeDef of ComfyUI V1 node class ``cls`` registered as ``name``."""
    where = f"{name} (class {getattr(cls, '__qualname__', cls)!s})"
    if not inspect.isclass(cls):
        raise DeclarationError(f"{where}: NODE_CLASS_MAPPINGS must map names to classes, got {type(cls).__name__}")
    if hasattr(cls, "define_schema"):  # a V3 node (comfy_api io.ComfyNode) in NODE_CLASS_MAPPINGS
        from .comfy_v3 import node_def as v3_node_def

        return v3_node_def(name, cls, display_name, pack=pack, source=source)
    try:
        declared = cls.INPUT_TYPES()
    except Exception as exc:
        raise DeclarationError(f"{where}: INPUT_TYPES() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(declared, dict):
        raise DeclarationError(f"{where}: INPUT_TYPES() must return a dict, got {type(declared).__name__}")
    inputs: dict[str, InputSpec] = {}
    for section, optional in (("required", False), ("optional", True)):
        for iname, entry in (declared.get(section) or {}).items():
            if optional and str(iname) in inputs:
                continue  # named in both sections: it stays required, as in ComfyUI
            inputs[str(iname)] = _spec(where, iname, entry, optional)
    hidden: dict[str, Hidden] = {}
    unknown_hidden: list[str] = []
    for hname, kind in (declared.get("hidden") or {}).items():
        if kind in HIDDEN_KINDS:
            hidden[str(hname)] = Hidden(kind)
        else:
            # ComfyUI gives its API-node credentials (None without them) and nothing for any other
            # kind (tinyterra declares "ttNnodeVersion": a version string, never passed)
            if kind in ("AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"):
                unknown_hidden.append(str(hname))

    return_types = getattr(cls, "RETURN_TYPES", ())
    if isinstance(return_types, str) or not isinstance(return_types, (tuple, list)):
        raise DeclarationError(f"{where}: RETURN_TYPES must be a tuple, got {return_types!r} "
                               f"(a one-element tuple needs a comma: (\"IMAGE\",))")
    names = list(getattr(cls, "RETURN_NAMES", None) or [])
    is_list = list(getattr(cls, "OUTPUT_IS_LIST", None) or [])
    tips = list(getattr(cls, "OUTPUT_TOOLTIPS", None) or [])
    outputs = []
    for i, rtype in enumerate(return_types):
        rtype = "COMBO" if isinstance(rtype, (list, tuple)) else str(rtype)
        outputs.append(Output(rtype, str(names[i]) if i < len(names) else rtype,
                              bool(is_list[i]) if i < len(is_list) else False, tips[i] if i < len(tips) else None))
    output_node = bool(getattr(cls, "OUTPUT_NODE", False))
    function = getattr(cls, "FUNCTION", None)
    # a node with no RETURN_TYPES that is not an OUTPUT_NODE (Efficiency's "XY Entry Info": a
    # panel of text for the frontend, with no FUNCTION) is registered as ComfyUI does; nothing
    # can depend on it and it is not an output, so no workflow runs it
    never_runs = not outputs and not output_node
    if not never_runs and (not isinstance(function, str) or not callable(getattr(cls, function, None))):
        raise DeclarationError(f"{where}: FUNCTION must name a method of the class (got {function!r})")

    instances: dict[str, Any] = {}

    def instance(ctx) -> Any:
        obj = instances.get(ctx.node_id)
        if obj is None:
            obj = instances[ctx.node_id] = cls()
        return obj

    samplers = [n for n, spec in inputs.items() if spec.type == "SAMPLER"]

    def call(**kwargs):
        ctx = kwargs.pop(CONTEXT)
        obj = instance(ctx)
        for hname in unknown_hidden:
            kwargs.setdefault(hname, None)
        as_comfy_samplers(kwargs, samplers)
        if never_runs:
            raise DeclarationError(f"{where}: a node with no RETURN_TYPES and no OUTPUT_NODE is never run "
                                   f"(ComfyUI registers it for the frontend only)")
        with node_call(ctx):  # ComfyUI's module functions (ProgressBar, interrupts) find the node here
            ret = getattr(obj, function)(**kwargs)
        return _result(name, ret, len(outputs))

    def check_lazy(**kwargs):
        ctx = kwargs.pop(CONTEXT)
        obj = instance(ctx)
        for hname in unknown_hidden:
            kwargs.setdefault(hname, None)
        with node_call(ctx):
            return obj.check_lazy_status(**kwargs)

    lazy_check = check_lazy if callable(getattr(cls, "check_lazy_status", None)) else None

    changed = getattr(cls, "IS_CHANGED", None)
    fp_inputs = _validate_inputs(changed, inputs, hidden)[0] if callable(changed) else None  # VALIDATE_INPUTS' rule

    def changed_value(**kwargs):
        try:
            value = changed(**kwargs)
        except Exception as exc:  # ComfyUI: a failing IS_CHANGED means "changed", every time
            log.warning("%s: IS_CHANGED raised %s: %s; the node runs every time", name, type(exc).__name__, exc)
            return ("always", uuid.uuid4().hex)
        if isinstance(value, float) and math.isnan(value):
            return ("always", uuid.uuid4().hex)  # ComfyUI: NaN is never equal, so the node always runs
        return repr(value)

    fingerprint = changed_value if callable(changed) else None

    validate = v_inputs = None
    wants_types = False
    checker = getattr(cls, "VALIDATE_INPUTS", None)
    if callable(checker):
        v_inputs, wants_types = _validate_inputs(checker, inputs, hidden)
        validate = _validator(checker, v_inputs, unknown_hidden)

    doc = getattr(cls, "DESCRIPTION", None)
    return NodeDef(
        name=name, fn=call, inputs=inputs, outputs=tuple(outputs), hidden=hidden,
        category=str(getattr(cls, "CATEGORY", "") or "custom"),
        display_name=str(display_name or name), description=str(doc) if doc else "",
        output_node=output_node, fingerprint=fingerprint, fingerprint_inputs=fp_inputs or (), fingerprint_linked=True,
        validate=validate, validate_inputs=v_inputs or (), validate_linked=True, validate_types=wants_types,
        input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
        deprecated=bool(getattr(cls, "DEPRECATED", False)), experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
        python_module=f"custom_nodes.{pack}", context_param=CONTEXT, source=source, lazy_check=lazy_check)


def as_comfy_samplers(kwargs: dict, names: list[str]) -> None:
    """SAMPLER inputs as ComfyUI packs read them (``sampler.sampler_function``,
    ``.extra_options``): latentgraph's own SAMPLER values are a name or a SamplerChoice, which
    the layer's comfy.samplers turns into its KSAMPLER (a value already one is kept)."""
    if not names:
        return
    from .. import comfy_compat

    convert = comfy_compat.import_module("comfy.samplers")._as_ksampler
    for name in names:
        value = kwargs.get(name)
        if isinstance(value, list):  # INPUT_IS_LIST
            kwargs[name] = [convert(v) if v is not None else v for v in value]
        elif value is not None:
            kwargs[name] = convert(value)


def _result(name: str, ret: Any, n: int) -> Result | Expansion | Blocker:
    """A V1 return value (a tuple, ``{"ui", "result"}``, ``{"expand", "result"}``, or an
    ExecutionBlocker standing for every output) as what the executor reads."""
    ui = None
    if isinstance(ret, Blocker):
        return ret
    if isinstance(ret, dict):
        ui = ret.get("ui")
        if "expand" in ret:
            result = ret.get("result")
            result = (result,) * n if isinstance(result, Blocker) else tuple(result or ())
            return Expansion(ret["expand"], result, ui)
        ret = ret.get("result", ())
        if isinstance(ret, Blocker):
            ret = (ret,) * n
    if ret is None:  # ComfyUI fails on it too (object of type 'NoneType' has no len()), whatever the node declares
        raise TypeError(f"{name} returned None; a ComfyUI node returns a tuple (value, ...), () when it has no "
                        f"outputs, or a dict with 'ui'/'result'")
    if isinstance(ret, str) and n:  # ComfyUI indexes it like a tuple: output i is its i-th character
        log.warning("%s returned a str, not a tuple; as in ComfyUI its outputs are its characters", name)
    elif not isinstance(ret, (tuple, list, str)):
        raise TypeError(f"{name} returned a {type(ret).__name__}; a ComfyUI node returns a tuple (value,)")
    # as ComfyUI: extra values nothing can link to are dropped, and outputs the node did not
    # return reach the next node as None (real packs do both, e.g. returning {} or 1 of 2 values)
    values = tuple(ret)[:n] if n else ()
    values += (None,) * (n - len(values))
    return Result(*values, ui=ui)
