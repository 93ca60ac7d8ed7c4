"""ComfyUI's V3 node vocabulary (``comfy_api.latest.io``): the declarations a V3 node makes
(``io.Schema`` with ``io.Int.Input(...)``, ``io.Image.Output()``, ...) held as plain data, and
rendered in ComfyUI's V1 ``/object_info`` form by :meth:`Schema.get_v1_info`. Running a node is
latentgraph's (:mod:`latentgraph.plugins.comfy_v3` reads the schema into a NodeDef); nothing here
executes anything. Names, argument order and the option keys of ``as_dict`` are ComfyUI's
(0.3.64), so a pack's declarations and its ``/object_info`` entries come out the same.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections import Counter
from enum import Enum
from typing import Any, Callable

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.graph.expansion import Blocker


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


def prune_dict(d: dict) -> dict:
    """``d`` without its None values (ComfyUI leaves unset options out of /object_info)."""
    return {k: v for k, v in d.items() if v is not None}


class FolderType(str, Enum):
    input = "input"
    output = "output"
    temp = "temp"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class RemoteOptions:
    """Where the frontend fetches a combo's choices from (a frontend feature: shown, not used here)."""

    def __init__(self, route: str, refresh_button: bool, control_after_refresh: str = "first",
                 timeout: int = None, max_retries: int = None, refresh: int = None):
        self.route, self.refresh_button, self.control_after_refresh = route, refresh_button, control_after_refresh
        self.timeout, self.max_retries, self.refresh = timeout, max_retries, refresh

    def as_dict(self) -> dict:
        return prune_dict({"route": self.route, "refresh_button": self.refresh_button,
                           "control_after_refresh": self.control_after_refresh, "timeout": self.timeout,
                           "max_retries": self.max_retries, "refresh": self.refresh})


class _IOType(str):
    """A type name that, like ComfyUI's, is "not different" from "*" or from a comma-separated
    union it overlaps by inclusion (packs compare io types with ``!=``)."""

    def __ne__(self, other: object) -> bool:
        if self == "*" or other == "*":
            return False
        if not isinstance(other, str):
            return True
        mine, theirs = frozenset(self.split(",")), frozenset(other.split(","))
        return not (mine <= theirs or theirs <= mine)

    __hash__ = str.__hash__


class _ComfyType:
    Type = Any
    io_type: str = None


class _IO_V3:
    """Base of inputs and outputs: the type they belong to is ``Parent`` (set by comfytype)."""

    Parent: Any = None

    @property
    def io_type(self):
        return self.Parent.io_type

    @property
    def Type(self):  # noqa: N802 - ComfyUI's name
        return self.Parent.Type


class Input(_IO_V3):
    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                 lazy: bool = None, extra_dict=None):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy = tooltip, lazy
        self.extra_dict = extra_dict if extra_dict is not None else {}

    def as_dict(self) -> dict:
        return prune_dict({"display_name": self.display_name, "optional": self.optional, "tooltip": self.tooltip,
                           "lazy": self.lazy}) | prune_dict(self.extra_dict)

    def get_io_type(self):
        return _IOType(self.io_type)


class WidgetInput(Input):
    """An input the frontend draws as a widget (it takes a constant, or a link)."""

    def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                 lazy: bool = None, default: Any = None, socketless: bool = None, widget_type: str = None,
                 force_input: bool = None, extra_dict=None):
        super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
        self.default, self.socketless, self.widget_type, self.force_input = default, socketless, widget_type, force_input

    def as_dict(self) -> dict:
        return super().as_dict() | prune_dict({"default": self.default, "socketless": self.socketless,
                                               "widgetType": self.widget_type, "forceInput": self.force_input})

    def get_io_type(self):
        return self.widget_type if self.widget_type is not None else super().get_io_type()


class Output(_IO_V3):
    def __init__(self, id: str = None, display_name: str = None, tooltip: str = None,  # noqa: A002
                 is_output_list=False):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name, tooltip, is_output_list

    def as_dict(self) -> dict:
        return prune_dict({"display_name": self.display_name, "tooltip": self.tooltip,
                           "is_output_list": self.is_output_list})

    def get_io_type(self):
        return self.io_type


class ComfyTypeI(_ComfyType):
    """A type with an Input only."""

    class Input(Input):
        ...


class ComfyTypeIO(ComfyTypeI):
    """A type with an Input and an Output."""

    class Output(Output):
        ...


def comfytype(io_type: str, **kwargs):
    """Class decorator binding ``io_type`` to a type class; its Input/Output classes are copied
    so that each type's ``Parent`` is its own."""
    def bind(cls):
        if not issubclass(cls, _ComfyType):
            body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
            cls = type(cls.__name__, (cls, ComfyTypeIO), body)
        for role in ("Input", "Output"):
            inner = getattr(cls, role, None)
            if inner is not None:
                copy = type(inner.__name__, (inner,), {"__module__": inner.__module__, "__doc__": inner.__doc__})
                copy.__qualname__ = f"{cls.__qualname__}.{role}"
                copy.Parent = cls
                setattr(cls, role, copy)
        cls.io_type = _IOType(io_type)
        return cls
    return bind


def Custom(io_type: str) -> type:  # noqa: N802 - ComfyUI's name
    """A socket type of the pack's own (``io.Custom("INPAINT_PATCH")``)."""
    @comfytype(io_type=io_type)
    class CustomComfyType(ComfyTypeIO):
        ...
    return CustomComfyType


@comfytype(io_type="BOOLEAN")
class Boolean(ComfyTypeIO):
    Type = bool

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                     lazy: bool = None, default: bool = None, label_on: str = None, label_off: str = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.label_on, self.label_off = label_on, label_off

        def as_dict(self):
            return super().as_dict() | prune_dict({"label_on": self.label_on, "label_off": self.label_off})


@comfytype(io_type="INT")
class Int(ComfyTypeIO):
    Type = int

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                     lazy: bool = None, default: int = None, min: int = None, max: int = None,  # noqa: A002
                     step: int = None, control_after_generate: bool = None, display_mode: NumberDisplay = None,
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step = min, max, step
            self.control_after_generate, self.display_mode = control_after_generate, display_mode

        def as_dict(self):
            return super().as_dict() | prune_dict({
                "min": self.min, "max": self.max, "step": self.step,
                "control_after_generate": self.control_after_generate,
                "display": self.display_mode.value if self.display_mode else None})


@comfytype(io_type="FLOAT")
class Float(ComfyTypeIO):
    Type = float

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                     lazy: bool = None, default: float = None, min: float = None, max: float = None,  # noqa: A002
                     step: float = None, round: float = None, display_mode: NumberDisplay = None,  # noqa: A002
                     socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.min, self.max, self.step, self.round, self.display_mode = min, max, step, round, display_mode

        def as_dict(self):
            # ComfyUI passes the display mode itself here (a str enum: "slider" in JSON)
            return super().as_dict() | prune_dict({"min": self.min, "max": self.max, "step": self.step,
                                                   "round": self.round, "display": self.display_mode})


@comfytype(io_type="STRING")
class String(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, display_name: str = None, optional=False, tooltip: str = None,  # noqa: A002
                     lazy: bool = None, multiline=False, placeholder: str = None, default: str = None,
                     dynamic_prompts: bool = None, socketless: bool = None, force_input: bool = None):
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless, None, force_input)
            self.multiline, self.placeholder, self.dynamic_prompts = multiline, placeholder, dynamic_prompts

        def as_dict(self):
            return super().as_dict() | prune_dict({"multiline": self.multiline, "placeholder": self.placeholder,
                                                   "dynamicPrompts": self.dynamic_prompts})


@comfytype(io_type="COMBO")
class Combo(ComfyTypeIO):
    Type = str

    class Input(WidgetInput):
        def __init__(self, id: str, options: list | type[Enum] = None, display_name: str = None,  # noqa: A002
                     optional=False, tooltip: str = None, lazy: bool = None, default: Any = None,
                     control_after_generate: bool = None, upload: UploadType = None, image_folder: FolderType = None,
                     remote: RemoteOptions = None, socketless: bool = None):
            if isinstance(options, type) and issubclass(options, Enum):
                options = [member.value for member in options]
            if isinstance(default, Enum):
                default = default.value
            super().__init__(id, display_name, optional, tooltip, lazy, default, socketless)
            self.multiselect, self.options = False, options
            self.control_after_generate, self.upload, self.image_folder, self.remote = \
                control_after_generate, upload, image_folder, remote

        def as_dict(self):
            return super().as_dict() | prune_dict({
                "multiselect": self.multiselect, "options": self.options,
                "control_after_generate": self.control_after_generate,
                **({self.upload.value: True} if self.upload is not None else {}),
                "image_folder": self.image_folder.value if self.image_folder else None,
                "remote": self.remote.as_dict() if self.remote else None})

    class Output(Output):
        def __init__(self, id: str = None, display_name: str = None, options: list = None,  # noqa: A002
                     tooltip: str = None, is_output_list=False):
            super().__init__(id, display_name, tooltip, is_output_list)
            self.options = options if options is not None else []

        @property
        def io_type(self):  # a combo output's type is its list of choices, as V1's RETURN_TYPES
            return self.options


def _socket(name: str, io_type: str, python_type: Any = Any) -> type:
    """A type that only links carry (IMAGE, MODEL, ...): an Input and an Output, no widget."""
    return comfytype(io_type=io_type)(type(name, (ComfyTypeIO,), {"Type": python_type, "__module__": __name__}))


Image = _socket("Image", "IMAGE", torch.Tensor)
WanCameraEmbedding = _socket("WanCameraEmbedding", "WAN_CAMERA_EMBEDDING", torch.Tensor)
Mask = _socket("Mask", "MASK", torch.Tensor)
Latent = _socket("Latent", "LATENT", dict)
Conditioning = _socket("Conditioning", "CONDITIONING", list)
Sampler = _socket("Sampler", "SAMPLER")
Sigmas = _socket("Sigmas", "SIGMAS", torch.Tensor)
Noise = _socket("Noise", "NOISE")
Guider = _socket("Guider", "GUIDER")
Clip = _socket("Clip", "CLIP")
ControlNet = _socket("ControlNet", "CONTROL_NET")
Vae = _socket("Vae", "VAE")
Model = _socket("Model", "MODEL")
ClipVision = _socket("ClipVision", "CLIP_VISION")
ClipVisionOutput = _socket("ClipVisionOutput", "CLIP_VISION_OUTPUT")
StyleModel = _socket("StyleModel", "STYLE_MODEL")
Gligen = _socket("Gligen", "GLIGEN")
UpscaleModel = _socket("UpscaleModel", "UPSCALE_MODEL")
Audio = _socket("Audio", "AUDIO", dict)
Video = _socket("Video", "VIDEO")
SVG = _socket("SVG", "SVG")
LoraModel = _socket("LoraModel", "LORA_MODEL", dict)
LossMap = _socket("LossMap", "LOSS_MAP", dict)
Voxel = _socket("Voxel", "VOXEL")
Mesh = _socket("Mesh", "MESH")
Hooks = _socket("Hooks", "HOOKS")
HookKeyframes = _socket("HookKeyframes", "HOOK_KEYFRAMES")
TimestepsRange = _socket("TimestepsRange", "TIMESTEPS_RANGE", tuple)
LatentOperation = _socket("LatentOperation", "LATENT_OPERATION", Callable)
FlowControl = _socket("FlowControl", "FLOW_CONTROL", tuple)
Accumulation = _socket("Accumulation", "ACCUMULATION", dict)
Load3DCamera = _socket("Load3DCamera", "LOAD3D_CAMERA", dict)
Load3D = _socket("Load3D", "LOAD_3D", dict)
Load3DAnimation = _socket("Load3DAnimation", "LOAD_3D_ANIMATION", dict)
Photomaker = _socket("Photomaker", "PHOTOMAKER")
Point = _socket("Point", "POINT")
FaceAnalysis = _socket("FaceAnalysis", "FACE_ANALYSIS")
BBOX = _socket("BBOX", "BBOX")
SEGS = _socket("SEGS", "SEGS")
AnyType = _socket("AnyType", "*")
MODEL_PATCH = _socket("MODEL_PATCH", "MODEL_PATCH")
AudioEncoder = _socket("AudioEncoder", "AUDIO_ENCODER")
AudioEncoderOutput = _socket("AudioEncoderOutput", "AUDIO_ENCODER_OUTPUT")


@comfytype(io_type="COMFY_MULTITYPED_V3")
class MultiType:
    Type = Any

    class Input(Input):
        """An input that takes any of ``types``; when ``id`` is itself an Input (a widget), that
        input supplies the widget and its options, and its type comes first in the union."""

        def __init__(self, id: str | Input, types: list, display_name: str = None, optional=False,  # noqa: A002
                     tooltip: str = None, lazy: bool = None, extra_dict=None):
            self.input_override = None
            if isinstance(id, Input):
                override = self.input_override = copy.copy(id)
                optional = True if id.optional is True else optional
                tooltip = id.tooltip if id.tooltip is not None else tooltip
                display_name = id.display_name if id.display_name is not None else display_name
                lazy = id.lazy if id.lazy is not None else lazy
                id = id.id  # noqa: A001
                if isinstance(override, WidgetInput):
                    override.widget_type = override.get_io_type()
            super().__init__(id, display_name, optional, tooltip, lazy, extra_dict)
            self._io_types = types

        @property
        def io_types(self) -> list:
            return [t if isinstance(t, type) else type(t) for t in self._io_types]

        def get_io_type(self):
            names = [t.io_type for t in self.io_types]
            if self.input_override is not None:
                names.insert(0, self.input_override.get_io_type())
            return ",".join(dict.fromkeys(names))

        def as_dict(self):
            if self.input_override is not None:
                return self.input_override.as_dict() | super().as_dict()
            return super().as_dict()


class Hidden(str, Enum):
    """The values the executor fills in for a node that asks (``hidden=[io.Hidden.unique_id]``)."""

    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """``cls.hidden`` while a node runs: each hidden value it asked for; anything else is None."""

    def __init__(self, unique_id: str, prompt: Any, extra_pnginfo: Any, dynprompt: Any,
                 auth_token_comfy_org: str, api_key_comfy_org: str, **kwargs):
        self.unique_id, self.prompt, self.extra_pnginfo, self.dynprompt = unique_id, prompt, extra_pnginfo, dynprompt
        self.auth_token_comfy_org, self.api_key_comfy_org = auth_token_comfy_org, api_key_comfy_org

    def __getattr__(self, key: str):
        return None

    @classmethod
    def from_dict(cls, d: dict | None) -> "HiddenHolder":
        d = d or {}
        return cls(**{member.name: d.get(member) for member in Hidden})


@dataclasses.dataclass
class NodeInfoV1:
    input: dict = None
    input_order: dict = None
    output: list = None
    output_is_list: list = None
    output_name: list = None
    output_tooltips: list = None
    name: str = None
    display_name: str = None
    description: str = None
    python_module: Any = None
    category: str = None
    output_node: bool = None
    deprecated: bool = None
    experimental: bool = None
    api_node: bool = None


@dataclasses.dataclass
class Schema:
    """What a V3 node declares (ComfyUI's fields and defaults)."""

    node_id: str
    display_name: str = None
    category: str = "sd"
    inputs: list = None
    outputs: list = None
    hidden: list = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """ValueError when input or output ids repeat (within a list or between the two)."""
        ins = [i.id for i in self.inputs or ()]
        outs = [o.id for o in self.outputs or ()]
        problems = []
        for kind, ids in (("Input", ins), ("Output", outs)):
            twice = [i for i, n in Counter(ids).items() if n > 1]
            if twice:
                problems.append(f"{kind} ids must be unique, but {twice} are not.")
        both = set(ins) & set(outs)
        if both:
            problems.append(f"Ids must be unique between inputs and outputs, but {both} are not.")
        if problems:
            raise ValueError("\n".join(problems))

    def finalize(self) -> None:
        """Add the hidden values API and output nodes always get; name unnamed outputs."""
        wanted = []
        if self.is_api_node:
            wanted += [Hidden.auth_token_comfy_org, Hidden.api_key_comfy_org]
        if self.is_output_node:
            wanted += [Hidden.prompt, Hidden.extra_pnginfo]
        for item in wanted:
            self.hidden = self.hidden if self.hidden is not None else []
            if item not in self.hidden:
                self.hidden.append(item)
        for i, out in enumerate(self.outputs or ()):
            if out.id is None:
                out.id = f"_{i}_{out.io_type}_"

    def get_v1_info(self, cls) -> NodeInfoV1:
        """This schema as ComfyUI's V1 /object_info entry."""
        table: dict = {"required": {}}
        for item in self.inputs or ():
            add_to_dict_v1(item, table)
        for item in self.hidden or ():
            table.setdefault("hidden", {})[item.name] = (item.value,)
        outs = self.outputs or []
        return NodeInfoV1(
            input=table, input_order={key: list(value) for key, value in table.items()},
            output=[o.io_type for o in outs], output_is_list=[o.is_output_list for o in outs],
            output_name=[o.display_name or o.io_type for o in outs], output_tooltips=[o.tooltip or None for o in outs],
            name=self.node_id, display_name=self.display_name, description=self.description,
            python_module=getattr(cls, "RELATIVE_PYTHON_MODULE", "nodes"), category=self.category,
            output_node=self.is_output_node, deprecated=self.is_deprecated, experimental=self.is_experimental,
            api_node=self.is_api_node)


def add_to_dict_v1(item: Input, table: dict) -> None:
    options = item.as_dict()
    options.pop("optional", None)
    table.setdefault("optional" if item.optional else "required", {})[item.id] = (item.get_io_type(), options)


class _classproperty:
    def __init__(self, getter):
        self.getter = getter

    def __get__(self, obj, owner):
        return self.getter(owner)


class _ComfyNodeInternal:
    """Marker base of V3 node classes (ComfyUI's name)."""


class _NodeOutputInternal:
    """Marker base of V3 node results (ComfyUI's name)."""


class ComfyNode(_ComfyNodeInternal):
    """Base of V3 nodes: a class whose classmethods declare (``define_schema``) and run
    (``execute``) it. ``cls.hidden`` holds the hidden values while it runs."""

    RELATIVE_PYTHON_MODULE = None
    SCHEMA = None
    hidden: HiddenHolder = None
    resources = None

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> "NodeOutput":
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs) -> bool | str:
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> Any:
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]

    @classmethod
    def GET_BASE_CLASS(cls):  # noqa: N802 - ComfyUI's name
        return ComfyNode

    @classmethod
    def FINALIZE_SCHEMA(cls) -> Schema:  # noqa: N802
        schema = cls.define_schema()
        schema.finalize()
        return schema

    @classmethod
    def GET_SCHEMA(cls) -> Schema:  # noqa: N802
        schema = cls.FINALIZE_SCHEMA()
        schema.validate()
        return schema

    @classmethod
    def GET_NODE_INFO_V1(cls) -> dict:  # noqa: N802
        return dataclasses.asdict(cls.GET_SCHEMA().get_v1_info(cls))

    @classmethod
    def INPUT_TYPES(cls, include_hidden=True, return_schema=False):  # noqa: N802
        schema = cls.FINALIZE_SCHEMA()
        table = schema.get_v1_info(cls).input
        if not include_hidden:
            table.pop("hidden", None)
        return (table, schema) if return_schema else table

    # V1 attribute names packs read off other nodes' classes, answered from the schema
    RETURN_TYPES = _classproperty(lambda cls: cls.GET_SCHEMA().get_v1_info(cls).output)
    RETURN_NAMES = _classproperty(lambda cls: cls.GET_SCHEMA().get_v1_info(cls).output_name)
    OUTPUT_IS_LIST = _classproperty(lambda cls: cls.GET_SCHEMA().get_v1_info(cls).output_is_list)
    OUTPUT_TOOLTIPS = _classproperty(lambda cls: cls.GET_SCHEMA().get_v1_info(cls).output_tooltips)
    CATEGORY = _classproperty(lambda cls: cls.GET_SCHEMA().category)
    DESCRIPTION = _classproperty(lambda cls: cls.GET_SCHEMA().description)
    OUTPUT_NODE = _classproperty(lambda cls: cls.GET_SCHEMA().is_output_node)
    INPUT_IS_LIST = _classproperty(lambda cls: cls.GET_SCHEMA().is_input_list)
    DEPRECATED = _classproperty(lambda cls: cls.GET_SCHEMA().is_deprecated)
    EXPERIMENTAL = _classproperty(lambda cls: cls.GET_SCHEMA().is_experimental)
    FUNCTION = _classproperty(lambda cls: "EXECUTE_NORMALIZED_ASYNC" if inspect.iscoroutinefunction(cls.execute)
                              else "EXECUTE_NORMALIZED")


class _UIOutput:
    """Base of ui.* results: ``as_dict()`` is what the node shows (``{"images": [...]}``)."""

    def as_dict(self) -> dict:
        raise NotImplementedError


class NodeOutput(_NodeOutputInternal):
    """What ``execute`` returns: the output values, and optionally what to show (``ui``), a
    graph to run in the node's place (``expand``), or a message that blocks what follows."""

    def __init__(self, *args: Any, ui: _UIOutput | dict = None, expand: dict = None, block_execution: str = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if len(self.args) > 0 else None

    @classmethod
    def from_dict(cls, data: dict) -> "NodeOutput":
        """A V1-style ``{"result", "ui", "expand"}`` dict as a NodeOutput."""
        result = data.get("result", ())
        if isinstance(result, Blocker):
            return cls(block_execution=result.message)
        return cls(*(result or ()), ui=data.get("ui"), expand=data.get("expand"))

    def __getitem__(self, index):
        return self.args[index]


__all__ = [
    "FolderType", "UploadType", "RemoteOptions", "NumberDisplay", "comfytype", "Custom", "Input", "WidgetInput",
    "Output", "ComfyTypeI", "ComfyTypeIO", "Boolean", "Int", "Float", "String", "Combo", "Image",
    "WanCameraEmbedding", "Mask", "Latent", "Conditioning", "Sampler", "Sigmas", "Noise", "Guider", "Clip",
    "ControlNet", "Vae", "Model", "ClipVision", "ClipVisionOutput", "AudioEncoder", "AudioEncoderOutput",
    "StyleModel", "Gligen", "UpscaleModel", "Audio", "Video", "SVG", "LoraModel", "LossMap", "Voxel", "Mesh",
    "Hooks", "HookKeyframes", "TimestepsRange", "LatentOperation", "FlowControl", "Accumulation", "Load3DCamera",
    "Load3D", "Load3DAnimation", "Photomaker", "Point", "FaceAnalysis", "BBOX", "SEGS", "AnyType", "MultiType",
    "MODEL_PATCH", "HiddenHolder", "Hidden", "NodeInfoV1", "Schema", "ComfyNode", "NodeOutput", "add_to_dict_v1",
]
