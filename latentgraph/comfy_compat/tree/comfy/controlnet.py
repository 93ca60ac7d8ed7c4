"""ComfyUI's ``comfy.controlnet``: ``load_controlnet`` gives latentgraph's CONTROL_NET value (a
ControlNet, control-LoRA or T2I-Adapter, as the ControlNetLoader node loads it), and the classes
packs test it against with isinstance: ``ControlBase`` (every CONTROL_NET), ``ControlNet``,
``ControlLora`` and ``T2IAdapter`` (by the network inside). Subclassing them to build controls
of one's own (Advanced-ControlNet) needs ComfyUI's internals and is not provided."""

from __future__ import annotations

import enum
from pathlib import Path

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.models.control_lora import ControlLora as _OurControlLora
from latentgraph.models.controlnet import Control
from latentgraph.models.controlnet import ControlNet as _OurControlNet
from latentgraph.models.t2i_adapter import T2IAdapter as _OurAdapter

__all__ = ["ControlBase", "ControlLora", "ControlNet", "StrengthType", "T2IAdapter", "broadcast_image_to",
           "load_controlnet"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class StrengthType(enum.Enum):
    """ComfyUI's strength types, with its numbers (latentgraph's controls are CONSTANT)."""

    CONSTANT = 1
    LINEAR_UP = 2


class _ByNetwork(type):
    """isinstance holds for a Control whose network is of the class's kind (``_net``; None: any)."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        net = cls.__dict__.get("_net", ())
        return isinstance(obj, Control) and (net is None or isinstance(obj.net, net))

    def __subclasscheck__(cls, sub) -> bool:
        return type.__subclasscheck__(cls, sub) or (cls.__dict__.get("_net", ()) is None and issubclass(sub, Control))


class ControlBase(metaclass=_ByNetwork):
    """What every CONTROL_NET value is; a pack's own subclass cannot be sampled here."""

    _net = None

    def __init__(self, *args, **kwargs):
        raise runtime.missing(__name__, f"{type(self).__name__}.__init__")


class ControlNet(ControlBase):
    _net = _OurControlNet


class ControlLora(ControlNet):
    _net = _OurControlLora


class T2IAdapter(ControlBase):
    _net = _OurAdapter


def load_controlnet(ckpt_path: str, model=None, model_options: dict | None = None) -> Control:
    """The CONTROL_NET of a file (``model``: the MODEL a "diff" ControlNet is added to), as
    ControlNetLoader/DiffControlNetLoader load it; "_shuffle" files average their residuals."""
    from latentgraph.nodes.controlnet import load_control

    from comfy.sd import _services  # the tree's own module

    options = dict(model_options or {})
    pooling = options.pop("global_average_pooling", None)
    if options:
        raise ValueError(f"load_controlnet(model_options={model_options!r}): only global_average_pooling is applied")
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"load_controlnet: no file {ckpt_path}")
    placement, cache = _services()
    control = load_control(Path(ckpt_path), placement, cache, model)
    if pooling is not None:
        control.global_average_pooling = bool(pooling)
    return control


def broadcast_image_to(tensor: torch.Tensor, target_batch_size: int, batched_number: int) -> torch.Tensor:
    """``tensor`` repeated (or cut) to ``target_batch_size // batched_number`` rows, then stacked
    ``batched_number`` times: a hint for a batch of that many prompts."""
    from latentgraph.models.controlnet import broadcast_hint

    return broadcast_hint(tensor, target_batch_size, batched_number)
