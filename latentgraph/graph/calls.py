"""Calling one node: once, or once per item of its list inputs (ComfyUI's rule), and reading
what each call handed back (values, a UI dict, an Expansion, a Blocker) into the node's
outputs, one list per output slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .declare import NodeDef, Result
from .expansion import Blocker, Expansion, reset_call, set_call


@dataclass
class Call:
    """What one call of a node gave: values (one per output), or an expansion whose result
    is resolved once its graph has run, or a blocker standing for every output."""

    values: tuple | None = None
    ui: dict | None = None
    expansion: Expansion | None = None
    blocker: Blocker | None = None


def call_node(ndef: NodeDef, inputs: dict[str, list], ctx: Any, node_id: str,
              on_block: Callable[[Blocker], None] | None = None) -> list[Call]:
    """Call ``ndef`` once (input_is_list, or every input a single value) or once per index
    of the longest input list, shorter lists repeating their last item. A call given a
    Blocker is not made; a blocker's message goes to ``on_block`` once, and what flows on
    is a silent Blocker (as ComfyUI reports a blocked node once, not at every node after it)."""
    out: list[Call] = []
    for index, kwargs in enumerate(call_inputs(ndef, inputs)):
        blocker = _blocker_in(kwargs, ndef.input_is_list)
        if blocker is not None:
            if blocker.message is not None:
                if on_block is not None:
                    on_block(blocker)
                blocker = Blocker(None)
            out.append(Call(blocker=blocker))
            continue
        if ctx is not None:
            kwargs[ndef.context_param] = ctx
        token = set_call(node_id, index)  # GraphBuilder ids made by this call start with its prefix
        try:
            ret = ndef.fn(**kwargs)
        finally:
            reset_call(token)
        out.append(read_return(ndef, ret))
    return out


def call_inputs(ndef: NodeDef, inputs: dict[str, list]) -> list[dict]:
    """The keyword arguments of each call (fresh dicts: a caller may add to them)."""
    if ndef.input_is_list:
        return [dict(inputs)]
    sizes = [len(v) for v in inputs.values()]
    n = max(sizes, default=1)
    if n == 1:
        return [{k: v[0] for k, v in inputs.items()}]
    if 0 in sizes:
        return []
    return [{k: v[min(i, len(v) - 1)] for k, v in inputs.items()} for i in range(n)]


def _blocker_in(kwargs: dict, input_is_list: bool) -> Blocker | None:
    for value in kwargs.values():
        for item in (value if input_is_list and isinstance(value, list) else (value,)):
            if isinstance(item, Blocker):
                return item
    return None


def read_return(ndef: NodeDef, ret: Any) -> Call:
    """One call's return value as a Call (a wrong shape is a TypeError naming the node)."""
    n = len(ndef.outputs)
    if isinstance(ret, Blocker):
        return Call(blocker=ret)
    if isinstance(ret, Expansion):
        if not isinstance(ret.graph, dict):
            raise TypeError(f"{ndef.name} returned an expansion whose graph is a {type(ret.graph).__name__}, "
                            f"not a dict of nodes")
        result = tuple(ret.result or ())
        if len(result) != n:
            raise TypeError(f"{ndef.name} returned an expansion with {len(result)} result values but "
                            f"declares {n} outputs")
        return Call(expansion=Expansion(ret.graph, result, ret.ui), ui=ret.ui)
    values, ui = normalise(ndef, ret)
    return Call(values=values, ui=ui)


def merge_calls(ndef: NodeDef, calls: list[Call],
                resolve: Callable[[Expansion], tuple] | None = None) -> tuple[tuple, dict | None]:
    """The node's outputs (one list per slot) and UI from its calls; ``resolve`` turns an
    expansion's result into values once its graph has run."""
    outputs: tuple = tuple([] for _ in ndef.outputs)
    ui: dict | None = None
    for call in calls:
        if call.blocker is not None:
            values = (call.blocker,) * len(ndef.outputs)
        elif call.expansion is not None:
            values = resolve(call.expansion)
        else:
            values = call.values
        for j, out in enumerate(ndef.outputs):
            if out.is_list and not isinstance(values[j], Blocker):
                outputs[j].extend(values[j])
            else:
                outputs[j].append(values[j])
        if call.ui:
            ui = merge_ui(ui or {}, call.ui, ndef.name)
    return outputs, ui


def merge_ui(ui: dict, part: Any, name: str) -> dict:
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


def normalise(ndef: NodeDef, ret: Any) -> tuple[tuple, dict | None]:
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
        if out.is_list and not isinstance(values[j], (list, Blocker)):
            raise TypeError(f"{ndef.name}: output {j} ({out.name}) is a list output; return a list")
    return values, ui


def brief(value: Any) -> str:
    if isinstance(value, (int, float, bool, str)) or value is None:
        text = repr(value)
    elif hasattr(value, "shape"):
        text = f"{type(value).__name__}{tuple(value.shape)}"
    else:
        text = type(value).__name__
    return text if len(text) < 200 else text[:197] + "..."
