"""The node declaration API: a node is a function whose typed signature is its schema.

    @node(category="image", outputs=[IMAGE])
    def ImageInvert(image: Annotated[Tensor, IMAGE]) -> Tensor:
        "Inverts the colours of an image."
        return 1.0 - image

Inputs come from the parameters, in order, each ``Annotated`` with an input spec; outputs from
``outputs=`` or from the return annotation. The description is the docstring. Nothing here
registers anything: ``NodeRegistry.register`` turns the declaration into a ``NodeDef`` and
checks it against the function, failing loudly on any mismatch.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

from .context import NodeContext
from .errors import DeclarationError
from .types import MISSING, CoercionError, Hidden, InputSpec, Output, Socket, as_output

_ATTR = "__latentgraph_node__"


@dataclass(frozen=True)
class Declaration:
    """What ``@node(...)`` records on a function; read by the registry."""

    name: str | None
    category: str
    display_name: str | None
    description: str | None
    outputs: tuple | None
    output_node: bool
    version: int
    cacheable: bool
    fingerprint: Callable | None
    validate: Callable | None
    input_is_list: bool
    deprecated: bool
    experimental: bool
    python_module: str | None


def node(
    name: str | Callable | None = None,
    *,
    category: str = "",
    display_name: str | None = None,
    description: str | None = None,
    outputs: typing.Sequence | None = None,
    output_node: bool = False,
    version: int = 1,
    cacheable: bool = True,
    fingerprint: Callable | None = None,
    validate: Callable | None = None,
    input_is_list: bool = False,
    deprecated: bool = False,
    experimental: bool = False,
    python_module: str | None = None,
):
    """Declare a function as a node.

    name         the class_type (default: the function's name)
    outputs      output specs: "IMAGE", IMAGE, ("mask", "MASK") or Output(...)
    output_node  the node is a sink that makes results (SaveImage); workflows run toward these
    version      part of the cache key: bump it when results change for the same inputs
    cacheable    False for non-deterministic nodes: they run every time, and so does what follows
    fingerprint  f(<inputs it names>, env=) -> hashable, folded into the cache key (a file's identity)
    validate     f(<inputs it names>, env=) -> None | message | {input: message}, run at validation;
                 the inputs it names skip the built-in range and choice checks (as VALIDATE_INPUTS)
    """

    def wrap(fn: Callable) -> Callable:
        decl = Declaration(
            name=name if isinstance(name, str) else None,
            category=category,
            display_name=display_name,
            description=description,
            outputs=tuple(outputs) if outputs is not None else None,
            output_node=output_node,
            version=version,
            cacheable=cacheable,
            fingerprint=fingerprint,
            validate=validate,
            input_is_list=input_is_list,
            deprecated=deprecated,
            experimental=experimental,
            python_module=python_module,
        )
        setattr(fn, _ATTR, decl)
        return fn

    if callable(name):  # bare @node
        fn, name = name, None
        return wrap(fn)
    return wrap


def declaration_of(obj: Any) -> Declaration | None:
    return getattr(obj, _ATTR, None)


class Result:
    """What a node returns when it has UI output (images to show) besides its values."""

    __slots__ = ("values", "ui")

    def __init__(self, *values: Any, ui: dict | None = None):
        self.values = values
        self.ui = ui

    def __repr__(self) -> str:
        return f"Result({len(self.values)} values, ui={self.ui!r})"


@dataclass
class NodeDef:
    """A checked node declaration: everything the engine and /object_info need."""

    name: str
    fn: Callable
    inputs: dict[str, InputSpec]  # declared order
    outputs: tuple[Output, ...]
    hidden: dict[str, Hidden] = field(default_factory=dict)
    category: str = ""
    display_name: str = ""
    description: str = ""
    output_node: bool = False
    version: int = 1
    cacheable: bool = True
    fingerprint: Callable | None = None
    fingerprint_inputs: tuple = ()
    fingerprint_env: bool = False  # the hook takes env=
    # ComfyUI's IS_CHANGED: called even when inputs it takes are linked (they get None) or hidden
    fingerprint_linked: bool = False
    validate: Callable | None = None
    validate_inputs: tuple = ()
    validate_env: bool = False
    # ComfyUI's VALIDATE_INPUTS: called even when inputs it names are linked (they get None) or
    # hidden, and given input_types {input: linked type} when it asks (then it owns type checks)
    validate_linked: bool = False
    validate_types: bool = False
    input_is_list: bool = False
    deprecated: bool = False
    experimental: bool = False
    python_module: str = "nodes"
    context_param: str | None = None
    source: str = "builtin"
    # lazy inputs (``extra={"lazy": True}``) are computed only when this hook, called with
    # what is known (a lazy input not computed yet is None), names them (ComfyUI's
    # check_lazy_status); without the hook every input is computed
    lazy_check: Callable | None = None

    def __post_init__(self):
        self.lazy_inputs = frozenset(n for n, s in self.inputs.items()
                                     if s.extra.get("lazy") is True and self.lazy_check is not None)
        self.required = tuple(n for n, s in self.inputs.items() if not s.optional)
        self.optional = tuple(n for n, s in self.inputs.items() if s.optional)
        self.output_types = tuple(o.type for o in self.outputs)
        self.output_names = tuple(o.name for o in self.outputs)

    def output_index(self, ref: int | str) -> int | None:
        """Index of an output named by index, name, or (if unique) type; None if unknown."""
        n = len(self.outputs)
        if isinstance(ref, int) and not isinstance(ref, bool):
            return ref if 0 <= ref < n else None
        if not isinstance(ref, str):
            return None
        if ref.isdigit():
            return int(ref) if int(ref) < n else None
        for attempt in (self.output_names, self.output_types):
            hits = [i for i, name in enumerate(attempt) if name == ref]
            if len(hits) == 1:
                return hits[0]
        hits = [i for i, name in enumerate(self.output_names) if name.lower() == ref.lower()]
        return hits[0] if len(hits) == 1 else None

    def output_label(self, index: int) -> str | int:
        """How a link to output ``index`` is written in YAML: its name if unambiguous."""
        name = self.outputs[index].name
        return name if self.output_index(name) == index and not name.isdigit() else index

    def object_info(self, env=None) -> dict:
        """This node in ComfyUI's ``/object_info`` shape."""
        required, optional = {}, {}
        for name, spec in self.inputs.items():
            choices = spec.resolve(env) if hasattr(spec, "resolve") else None
            (optional if spec.optional else required)[name] = spec.info(choices)
        inputs: dict = {"required": required}
        if optional:
            inputs["optional"] = optional
        order = {"required": list(required)}
        if optional:
            order["optional"] = list(optional)
        if self.hidden:
            inputs["hidden"] = {name: h.kind for name, h in self.hidden.items()}
            order["hidden"] = list(self.hidden)
        info = {
            "input": inputs,
            "input_order": order,
            "output": list(self.output_types),
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": list(self.output_names),
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
        }
        tips = [o.tooltip or "" for o in self.outputs]
        if any(tips):
            info["output_tooltips"] = tips
        if self.deprecated:
            info["deprecated"] = True
        if self.experimental:
            info["experimental"] = True
        return info


def build_node_def(fn: Callable, *, python_module: str | None = None, source: str = "builtin") -> NodeDef:
    """Read a decorated function into a NodeDef, checking the declaration against the
    signature. Every problem found is listed in one DeclarationError."""
    decl = declaration_of(fn)
    if decl is None:
        raise DeclarationError(f"{_where(fn)} is not declared as a node (decorate it with @node)")
    name = decl.name or getattr(fn, "__name__", None)
    problems: list[str] = []
    if not isinstance(name, str) or not name or any(c in name for c in "\n\r\t"):
        raise DeclarationError(f"{_where(fn)}: invalid node name {name!r}")

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        sig = inspect.signature(fn)
    except NameError as exc:
        raise DeclarationError(
            f"node {name} ({_where(fn)}): cannot resolve an annotation: {exc} (annotations are read "
            f"in the module's globals; under `from __future__ import annotations` a name defined "
            f"inside a function cannot be used there)") from exc
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"node {name} ({_where(fn)}): cannot read its signature: {exc}") from exc

    inputs: dict[str, InputSpec] = {}
    hidden: dict[str, Hidden] = {}
    context_param = None
    for pname, param in sig.parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            problems.append(f"parameter '{pname}': *args/**kwargs cannot be declared as inputs")
            continue
        if param.kind is param.POSITIONAL_ONLY:
            problems.append(f"parameter '{pname}' is positional-only; nodes are called with keywords")
            continue
        hint = hints.get(pname, MISSING)
        if hint is NodeContext:
            context_param = pname
            continue
        base, meta = _split_annotated(hint)
        specs = [m for m in meta if isinstance(m, (InputSpec, Hidden))]
        if len(specs) != 1:
            problems.append(
                f"parameter '{pname}' needs exactly one input spec, e.g. "
                f"Annotated[int, Int(min=0)] or Annotated[Tensor, IMAGE] (found {len(specs)})"
            )
            continue
        spec = specs[0]
        if isinstance(spec, Hidden):
            hidden[pname] = spec
            continue
        spec, spec_problems = _merge_default(pname, spec, param, base)
        problems.extend(spec_problems)
        inputs[pname] = spec

    outputs = _read_outputs(decl, hints.get("return", MISSING), problems)
    hook_names, hook_env = {}, {}
    for hook_name in ("fingerprint", "validate"):
        hook = getattr(decl, hook_name)
        hook_names[hook_name], hook_env[hook_name] = (), False
        if hook is None:
            continue
        try:
            params = list(inspect.signature(hook).parameters)
        except (TypeError, ValueError):
            problems.append(f"{hook_name} hook: cannot read its signature")
            continue
        unknown = [p for p in params if p not in inputs and p != "env"]
        if unknown:
            problems.append(f"{hook_name} hook names inputs the node does not have: {unknown}")
        hook_names[hook_name] = tuple(p for p in params if p in inputs)
        hook_env[hook_name] = "env" in params

    if decl.output_node is False and not outputs:
        problems.append("a node with no outputs must be an output node (output_node=True)")
    if problems:
        listing = "\n".join(f"  - {p}" for p in problems)
        raise DeclarationError(f"node {name} ({_where(fn)}) does not match its function:\n{listing}")

    doc = inspect.getdoc(fn) or ""
    return NodeDef(
        name=name,
        fn=fn,
        inputs=inputs,
        outputs=outputs,
        hidden=hidden,
        category=decl.category,
        display_name=decl.display_name or name,
        description=decl.description if decl.description is not None else _first_paragraph(doc),
        output_node=decl.output_node,
        version=decl.version,
        cacheable=decl.cacheable,
        fingerprint=decl.fingerprint,
        fingerprint_inputs=hook_names["fingerprint"],
        fingerprint_env=hook_env["fingerprint"],
        validate=decl.validate,
        validate_inputs=hook_names["validate"],
        validate_env=hook_env["validate"],
        input_is_list=decl.input_is_list,
        deprecated=decl.deprecated,
        experimental=decl.experimental,
        python_module=decl.python_module or python_module or getattr(fn, "__module__", "nodes"),
        context_param=context_param,
        source=source,
    )


def _first_paragraph(doc: str) -> str:
    """A docstring's first paragraph as one line: the node's description (ComfyUI's
    DESCRIPTION), which the frontend shows as running text."""
    return " ".join(doc.split("\n\n")[0].split())


def _split_annotated(hint: Any) -> tuple[Any, tuple]:
    if typing.get_origin(hint) is typing.Annotated:
        return hint.__origin__, hint.__metadata__
    return hint, ()


def _merge_default(pname: str, spec: InputSpec, param: inspect.Parameter, base: Any):
    """Reconcile the spec's default with the Python default; check types and ranges."""
    problems = []
    py_default = param.default if param.default is not inspect.Parameter.empty else MISSING
    if spec.optional and py_default is MISSING:
        problems.append(f"optional input '{pname}' needs a Python default (e.g. = None) for when it is absent")
    if spec.widget and py_default is not MISSING and not spec.optional:
        if spec.default is MISSING:
            spec = spec(default=py_default)
        elif spec.default != py_default:
            problems.append(
                f"input '{pname}': spec default {spec.default!r} differs from the Python default {py_default!r}"
            )
    if spec.python_types and base not in (MISSING, Any, object) and isinstance(base, type):
        if not any(issubclass(base, t) for t in spec.python_types):
            problems.append(
                f"input '{pname}' is declared {spec.type} but annotated {base.__name__}"
            )
    if isinstance(spec, Socket) and spec.default is not MISSING:
        problems.append(f"socket input '{pname}' ({spec.type}) cannot have a default value")
    if spec.widget and spec.default is not MISSING and not callable(getattr(spec, "choices", None)):
        try:
            value = spec.coerce(spec.default)
            bad = spec.check(value)
        except CoercionError as exc:
            bad = ("invalid", str(exc))
        if bad:
            problems.append(f"input '{pname}': default {spec.default!r} is invalid: {bad[1]}")
    return spec, problems


def _read_outputs(decl: Declaration, ret_hint: Any, problems: list) -> tuple[Output, ...]:
    declared = None
    if decl.outputs is not None:
        try:
            declared = tuple(as_output(o) for o in decl.outputs)
        except TypeError as exc:
            problems.append(str(exc))
            return ()
    annotated = _outputs_from_annotation(ret_hint)
    if declared is not None and annotated is not None:
        if tuple(o.type for o in declared) != tuple(o.type for o in annotated):
            problems.append(
                f"outputs= declares {[o.type for o in declared]} but the return annotation "
                f"says {[o.type for o in annotated]}"
            )
    elif declared is None and annotated is None:
        base, _ = _split_annotated(ret_hint)
        if base not in (MISSING, None, type(None), Result):
            problems.append("outputs are not declared: pass outputs=[...] or annotate the return type")
    # Repeated output names stay legal (links by index work); YAML then writes indices.
    return declared if declared is not None else (annotated or ())


def _outputs_from_annotation(hint: Any) -> tuple[Output, ...] | None:
    def one(h):
        _, meta = _split_annotated(h)
        for m in meta:
            if isinstance(m, (Output, Socket, InputSpec)):
                return as_output(m)
        return None

    single = one(hint)
    if single is not None:
        return (single,)
    if typing.get_origin(hint) is tuple:
        items = [one(h) for h in typing.get_args(hint)]
        if items and all(i is not None for i in items):
            return tuple(items)
    return None


def _where(fn: Callable) -> str:
    module = getattr(fn, "__module__", "?")
    qual = getattr(fn, "__qualname__", repr(fn))
    return f"{module}.{qual}"
