"""Port types and input/output specs: the vocabulary of a node declaration.

Type names are ComfyUI's, so API workflows and ``/object_info`` line up. A *socket* input
(MODEL, LATENT, ...) only takes a link; a *widget* input (INT, FLOAT, STRING, BOOLEAN, a
combo) takes a constant, or a link from an output of the same type.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING"})()

# Socket types of Stable Diffusion graphs. Any other string is a valid socket type as
# well (plugins add their own); "*" accepts everything.
MODEL_T, CLIP_T, VAE_T = "MODEL", "CLIP", "VAE"
CONDITIONING_T, LATENT_T, IMAGE_T, MASK_T = "CONDITIONING", "LATENT", "IMAGE", "MASK"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
ANY = "*"

# INT inputs without declared bounds still reject values no 64-bit integer holds.
INT_FLOOR, INT_CEIL = -(2**63), 2**64 - 1


def types_compatible(received: str, expected: str) -> bool:
    """Whether an output of type ``received`` may feed an input of type ``expected``.

    As in ComfyUI: "*" matches anything, and comma-separated names are unions that match
    when they share a member.
    """
    if received == expected or received == ANY or expected == ANY:
        return True
    if "," in received or "," in expected:
        got = {t.strip() for t in received.split(",")}
        want = {t.strip() for t in expected.split(",")}
        return ANY in got or ANY in want or bool(got & want)
    return False


class CoercionError(ValueError):
    """A constant could not be turned into the value an input takes."""


@dataclass(frozen=True)
class InputSpec:
    """Base of every input declaration; ``type`` is the port type name. The one positional
    argument is the default: ``Int(512, min=16)``."""

    default: Any = MISSING
    _: KW_ONLY
    type: str = ANY
    optional: bool = False
    tooltip: str | None = None
    extra: dict = field(default_factory=dict)  # passed through to /object_info as is

    widget: ClassVar[bool] = False  # True for inputs that take constants
    python_types: ClassVar[tuple] = ()  # parameter annotations that fit this spec; () means any

    def __call__(self, **changes) -> "InputSpec":
        """A copy with options changed: ``IMAGE(optional=True)``, ``Int(min=1)(max=9)``."""
        return replace(self, **changes)

    def options(self, choices: Sequence | None = None) -> dict:
        """The option dict of ``/object_info`` (second element of an input entry)."""
        opts = {}
        if self.default is not MISSING:
            opts["default"] = self.default
        if self.tooltip:
            opts["tooltip"] = self.tooltip
        opts.update(self.extra)
        return opts

    def info(self, choices: Sequence | None = None) -> list:
        """The ``/object_info`` entry of this input: ``[type]`` or ``[type, {options}]``."""
        opts = self.options(choices)
        return [self.type, opts] if opts else [self.type]

    def coerce(self, value: Any) -> Any:
        """Turn a constant into the value this input takes; raise CoercionError if it can't."""
        return value

    def check(self, value: Any, choices: Sequence | None = None) -> tuple[str, str] | None:
        """Range or membership problem of a coerced value as (error type, message), else None."""
        return None


@dataclass(frozen=True, init=False)
class Socket(InputSpec):
    """An input that takes a link from another node's output of type ``type``:
    ``Socket("MODEL")``, ``Socket("UPSCALE_MODEL", optional=True)``."""

    def __init__(self, type: str, *, optional: bool = False, tooltip: str | None = None,
                 extra: dict | None = None, default: Any = MISSING):
        for name, value in (("type", type), ("optional", optional), ("tooltip", tooltip),
                            ("extra", dict(extra or {})), ("default", default)):
            object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return f"Socket({self.type!r})"


@dataclass(frozen=True, kw_only=True)
class _Number(InputSpec):
    min: float | None = None
    max: float | None = None
    step: float | None = None
    display: str | None = None  # "number" or "slider", a frontend hint

    widget = True

    def options(self, choices=None) -> dict:
        opts = super().options()
        for key in ("min", "max", "step", "display"):
            val = getattr(self, key)
            if val is not None:
                opts[key] = val
        return opts

    def _bounds(self) -> tuple:
        return self.min, self.max

    def check(self, value, choices=None):
        lo, hi = self._bounds()
        if lo is not None and value < lo:
            return "value_smaller_than_min", f"Value {_short(str(value))} smaller than min of {lo}"
        if hi is not None and value > hi:
            return "value_bigger_than_max", f"Value {_short(str(value))} bigger than max of {hi}"
        return None


@dataclass(frozen=True, kw_only=True)
class Int(_Number):
    """An INT widget. ``control_after_generate`` marks a seed (the frontend adds a control)."""

    type: str = "INT"
    control_after_generate: bool = False
    python_types = (int,)

    def options(self, choices=None) -> dict:
        opts = super().options()
        if self.control_after_generate:
            opts["control_after_generate"] = True
        return opts

    def _bounds(self):
        lo = INT_FLOOR if self.min is None else self.min
        hi = INT_CEIL if self.max is None else self.max
        return lo, hi

    def coerce(self, value):
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise CoercionError(f"{value} is not a finite number")
            return int(value)  # ComfyUI truncates: 7.9 -> 7
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError as exc:
                raise CoercionError(_short(str(exc), 120)) from None
        raise CoercionError(f"a {type(value).__name__} is not an integer")


@dataclass(frozen=True, kw_only=True)
class Float(_Number):
    """A FLOAT widget; ``round`` is the frontend's rounding precision."""

    type: str = "FLOAT"
    round: float | bool | None = None
    python_types = (float, int)

    def options(self, choices=None) -> dict:
        opts = super().options()
        if self.round is not None:
            opts["round"] = self.round
        return opts

    def coerce(self, value):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                out = float(value)
            except (ValueError, OverflowError) as exc:
                raise CoercionError(str(exc)) from None
        elif isinstance(value, bool):
            out = float(value)
        else:
            raise CoercionError(f"a {type(value).__name__} is not a number")
        if not math.isfinite(out):
            raise CoercionError(f"{value} is not a finite number")
        return out


@dataclass(frozen=True, kw_only=True)
class String(InputSpec):
    """A STRING widget; ``multiline`` asks for a text box."""

    type: str = "STRING"
    multiline: bool = False
    placeholder: str | None = None
    dynamic_prompts: bool | None = None

    widget = True
    python_types = (str,)

    def options(self, choices=None) -> dict:
        opts = super().options()
        if self.multiline:
            opts["multiline"] = True
        if self.placeholder is not None:
            opts["placeholder"] = self.placeholder
        if self.dynamic_prompts is not None:
            opts["dynamicPrompts"] = self.dynamic_prompts
        return opts

    def coerce(self, value):
        if isinstance(value, (dict, list)):
            raise CoercionError(f"a {type(value).__name__} is not a string")
        return str(value)


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True, kw_only=True)
class Boolean(InputSpec):
    """A BOOLEAN widget. Strings "true"/"false" (yes/no, on/off, 1/0) are read as words."""

    type: str = "BOOLEAN"
    label_on: str | None = None
    label_off: str | None = None

    widget = True
    python_types = (bool,)

    def options(self, choices=None) -> dict:
        opts = super().options()
        if self.label_on is not None:
            opts["label_on"] = self.label_on
        if self.label_off is not None:
            opts["label_off"] = self.label_off
        return opts

    def coerce(self, value):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise CoercionError(f"{_short(repr(value))} is not a boolean (use true or false)")


@dataclass(frozen=True, init=False)
class Combo(InputSpec):
    """A choice among ``choices``: a fixed list, or a function of the Environment that
    lists what is there now (files in a model folder, say): ``Combo(["a", "b"], default="a")``."""

    choices: Sequence | Callable[[Any], Sequence] = ()
    image_upload: bool = False

    def __init__(self, choices: Sequence | Callable = (), *, default: Any = MISSING, optional: bool = False,
                 tooltip: str | None = None, extra: dict | None = None, image_upload: bool = False,
                 type: str = "COMBO"):
        if not callable(choices):
            choices = tuple(choices)
        for name, value in (("type", type), ("choices", choices), ("default", default),
                            ("optional", optional), ("tooltip", tooltip), ("extra", dict(extra or {})),
                            ("image_upload", image_upload)):
            object.__setattr__(self, name, value)

    widget = True
    python_types = (str, int, float)

    def resolve(self, env) -> list:
        return list(self.choices(env)) if callable(self.choices) else list(self.choices)

    def options(self, choices=None) -> dict:
        opts = super().options()
        if self.image_upload:
            opts["image_upload"] = True
        return opts

    def info(self, choices=None) -> list:
        # ComfyUI's V1 form: the list itself stands where a type name would.
        return [list(choices if choices is not None else self.resolve(None)), self.options()]

    def coerce(self, value):
        if isinstance(value, (dict, list)):
            raise CoercionError(f"a {type(value).__name__} is not one of the choices")
        return value

    def check(self, value, choices=None):
        if choices is None:
            choices = self.resolve(None)
        if value in choices:
            return None
        if isinstance(value, str) and "\\" in value and value.replace("\\", "/") in choices:
            return None
        listed = f"(list of length {len(choices)})" if len(choices) > 20 else str(list(choices))
        return "value_not_in_list", f"'{value}' not in {listed}"


HIDDEN_KINDS = ("PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT")


@dataclass(frozen=True)
class Hidden:
    """An input the executor fills in: the whole prompt (API form), the extra PNG info the
    client sent, or the node's own id. Never set by workflows."""

    kind: str

    def __post_init__(self):
        if self.kind not in HIDDEN_KINDS:
            raise ValueError(f"hidden input kind must be one of {HIDDEN_KINDS}, not {self.kind!r}")


@dataclass(frozen=True)
class Output:
    """A declared output: its type, name (defaults to the type), and list flag."""

    type: str
    name: str | None = None
    is_list: bool = False
    tooltip: str | None = None

    def named(self, name: str) -> "Output":
        return replace(self, name=name)


def as_output(spec: Any) -> Output:
    """Accept ``"IMAGE"``, ``IMAGE`` (a Socket), ``("mask", "MASK")`` or an Output."""
    if isinstance(spec, Output):
        return spec if spec.name else replace(spec, name=spec.type)
    if isinstance(spec, str):
        return Output(spec, spec)
    if isinstance(spec, Socket):
        return Output(spec.type, spec.type, tooltip=spec.tooltip)
    if isinstance(spec, InputSpec):  # a widget type used as output (INT, STRING, ...)
        return Output(spec.type, spec.type)
    if isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, str) for s in spec):
        return Output(spec[1], spec[0])
    raise TypeError(f"cannot read {spec!r} as an output declaration")


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Ready-made socket specs: ``image: Annotated[Tensor, IMAGE]``, ``IMAGE(optional=True)``.
MODEL = Socket(MODEL_T)
CLIP = Socket(CLIP_T)
VAE = Socket(VAE_T)
CONDITIONING = Socket(CONDITIONING_T)
LATENT = Socket(LATENT_T)
IMAGE = Socket(IMAGE_T)
MASK = Socket(MASK_T)
