"""ComfyUI's ``comfy.model_patcher``: ``ModelPatcher``, which every MODEL value here is an
instance of (nodes/sd.py's SDModel: the set_model_* methods of models/patcher.py and the faces
of models/comfy_faces.py), and which packs also build around networks of their own; and the
helpers that edit model_options dicts."""

from __future__ import annotations

from typing import Any, Callable

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.models import patcher as _patcher
from latentgraph.models import weight_patches as _weights


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class Alias(type):
    """A tree class that stands for one of latentgraph's (``_ours``): isinstance and issubclass
    are true of latentgraph's class and its instances too, so ``isinstance(model,
    comfy.model_patcher.ModelPatcher)`` holds for our MODEL values."""

    def __instancecheck__(cls, obj) -> bool:
        ours = cls.__dict__.get("_ours")
        return type.__instancecheck__(cls, obj) or (ours is not None and isinstance(obj, ours))

    def __subclasscheck__(cls, sub) -> bool:
        ours = cls.__dict__.get("_ours")
        return type.__subclasscheck__(cls, sub) or (ours is not None and issubclass(sub, ours))


class ModelPatcher(_patcher.ModelPatcher, metaclass=Alias):
    """ComfyUI's wrapper of a network (a pack's own ``ModelPatcher(net, load_device,
    offload_device)``): model_options and set_model_* as on a MODEL, weight and object patches
    applied copy-on-write to ``self.model`` (models/weight_patches.py), never to the network given."""

    _ours = _patcher.ModelPatcher

    def __init__(self, model: torch.nn.Module, load_device=None, offload_device=None, size: int = 0,
                 weight_inplace_update: bool = False):
        self.model = model
        self.load_device = load_device
        self.offload_device = offload_device
        self.size = size
        self.weight_inplace_update = weight_inplace_update
        self.model_options = _patcher.new_model_options()
        self.object_patches: dict[str, Any] = {}
        self.parent = None

    def clone(self) -> "ModelPatcher":
        n = type(self)(self.model, self.load_device, self.offload_device, self.size, self.weight_inplace_update)
        n.model_options = _patcher.copy_options(self.model_options)
        n.object_patches = dict(self.object_patches)
        n.parent = self
        return n

    def is_clone(self, other) -> bool:
        return getattr(other, "model", None) is self.model

    def model_size(self) -> int:
        if self.size <= 0:
            self.size = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        return self.size

    def model_dtype(self):
        get = getattr(self.model, "get_dtype", None)
        return get() if callable(get) else next(self.model.parameters()).dtype

    def model_state_dict(self, filter_prefix: str | None = None) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if filter_prefix is None or k.startswith(filter_prefix)}

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        names = [n for n, _ in self.model.named_parameters()]
        accepted, grouped = _weights.group_patches(patches, names, strength_patch, strength_model)
        if grouped:
            self.model = _weights.apply_patches(self.model, grouped)
        return accepted

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        return {n: [(p, _same)] for n, p in self.model.named_parameters()
                if filter_prefix is None or n.startswith(filter_prefix)}

    def calculate_weight(self, patches: list, weight: torch.Tensor, key: str,
                         intermediate_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return calculate_weight(patches, weight, key, intermediate_dtype)

    def get_model_object(self, name: str) -> Any:
        obj = self.model
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj

    def add_object_patch(self, name: str, obj: Any) -> None:
        tree = _weights.TreeCopy(self.model)
        tree.set(name, obj)
        self.model = tree.root
        self.object_patches = {**self.object_patches, name: obj}


def _same(weight, **_):
    return weight


def calculate_weight(patches: list, weight: torch.Tensor, key: str,
                     intermediate_dtype: torch.dtype = torch.float32, original_weights=None) -> torch.Tensor:
    """``weight`` after ComfyUI's patch entries (strength, patch, strength_model, offset,
    function), computed in float32, returned in the weight's dtype (a new tensor)."""
    return _weights.patched_weight(weight, list(patches), key).to(weight.dtype)


def create_model_options_clone(orig_model_options: dict) -> dict:
    return _patcher.copy_options(orig_model_options)


def set_model_options_patch_replace(model_options: dict, patch: Callable, name: str, block_name: str, number: int,
                                    transformer_index: int | None = None) -> dict:
    """``model_options`` with the attention ``name`` of a block replaced; the dicts on the way
    are new, so an options dict shared with another model is not changed."""
    to = dict(model_options["transformer_options"])
    to["patches_replace"] = dict(to.get("patches_replace", {}))
    to["patches_replace"][name] = dict(to["patches_replace"].get(name, {}))
    block = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
    to["patches_replace"][name][block] = patch
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options: dict, post_cfg_function: Callable,
                                        disable_cfg1_optimization: bool = False) -> dict:
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options: dict, pre_cfg_function: Callable,
                                       disable_cfg1_optimization: bool = False) -> dict:
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options
