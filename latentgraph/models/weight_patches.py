"""Weight patches in ComfyUI's shape (``add_patches``), applied copy-on-write to our modules.

Custom-node packs hand a MODEL or CLIP a dict ``{key: patch}`` with two strengths; for each
key the weight becomes, in float32 and in the order given::

    w = w * strength_model            (when strength_model is not 1)
    w = w + function(strength * diff) (a "diff" patch: ``(diff,)`` or ``("diff", (diff,))``)
    w = value                         (a "set" patch: ``("set", (value,))``)

A key is the parameter's name in ComfyUI's state dict, or ``(name, (dim, start, length))`` to
patch a slice, or ``(name, slice, function)``. A patch may also be the list
``[(weight, convert), patch, ...]`` that ``get_key_patches`` returns: that list's weight with
its own patches is then the diff (how ComfyUI's merge nodes add one model to another).
latentgraph's own LoRA patch objects (models/lora.py) are accepted too.

ComfyUI keeps the patch lists and combines them when the model is next loaded; here the new
weights are computed at once into a copy of the module tree that shares every other tensor and
module object with the original (only the modules on the way to a patched weight are new), so
the input model never changes and a clone costs nothing. Stacked patches of one key given in
separate calls are each rounded to the weight's dtype in between (the same result in float32).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from .cast import patched_dtype

# (strength_patch, patch, strength_model, offset, function): one entry of ComfyUI's patch list
Entry = tuple


class PatchError(ValueError):
    """A weight patch that does not fit its weight, or of a kind latentgraph does not apply."""


def parse_key(key: Any) -> tuple[str, tuple | None, Callable | None]:
    """ComfyUI's key forms -> (name, offset, function)."""
    if isinstance(key, str):
        return key, None, None
    if isinstance(key, tuple) and len(key) in (2, 3) and isinstance(key[0], str):
        offset = key[1]
        if offset is not None and not (isinstance(offset, tuple) and len(offset) == 3):
            raise PatchError(f"patch key {key!r}: the offset must be (dim, start, length), got {offset!r}")
        return key[0], offset, key[2] if len(key) == 3 else None
    raise PatchError(f"patch key {key!r}: expected a parameter name or (name, (dim, start, length)[, function])")


def group_patches(patches: dict, names: Iterable[str], strength_patch: float,
                  strength_model: float) -> tuple[list, dict[str, list[Entry]]]:
    """(the keys that name a weight of ``names``, {name: entries}); other keys are ignored, as
    ComfyUI ignores them (it returns only the keys it patched)."""
    if not isinstance(patches, dict):
        raise PatchError(f"add_patches expects a dict of {{key: patch}}, got {type(patches).__name__}")
    known = set(names)
    accepted, grouped = [], {}
    for key, value in patches.items():
        name, offset, function = parse_key(key)
        if name in known:
            accepted.append(key)
            grouped.setdefault(name, []).append((float(strength_patch), value, float(strength_model), offset, function))
    return accepted, grouped


def patched_weight(weight: torch.Tensor, entries: list[Entry], key: str) -> torch.Tensor:
    """The float32 weight after ComfyUI's patch entries, in order (``weight`` is not changed)."""
    w = weight.detach().to(torch.float32, copy=True)
    for strength, value, strength_model, offset, function in entries:
        target = w.narrow(*offset) if offset is not None else w
        if strength_model != 1.0:
            target.mul_(strength_model)
        _apply(target, value, strength, function, key)
    return w


def _apply(target: torch.Tensor, value: Any, strength: float, function: Callable | None, key: str) -> None:
    """One patch into ``target`` (float32, in place)."""
    fn = function or (lambda t: t)
    if isinstance(value, list):  # get_key_patches' [(weight, convert), patch, ...]: that weight, patched
        if not value or not isinstance(value[0], tuple) or not isinstance(value[0][0], torch.Tensor):
            raise PatchError(f"{key}: a patch list must start with (weight, convert function)")
        base, convert = value[0][0], value[0][1] if len(value[0]) > 1 else None
        base = base.to(target.device, torch.float32, copy=True)
        if convert is not None:
            base = convert(base, inplace=True)
        value = (patched_weight(base, list(value[1:]), key),)
    if hasattr(value, "apply") and hasattr(value, "fits"):  # latentgraph's LoRA patches (models/lora.py)
        if function is not None:
            raise PatchError(f"{key}: a function on a LoRA patch object is not applied by latentgraph")
        if not value.fits(target.shape):
            raise PatchError(f"{key}: the {type(value).__name__} patch does not fit the weight's shape "
                             f"{tuple(target.shape)}")
        target.copy_(value.apply(target.clone(), strength))
        return
    kind, args = _kind(value, key)
    if kind == "diff" and strength == 0.0:
        return  # as ComfyUI: a diff at strength 0 is never read (``(None,)`` with strength_model scales alone)
    tensor = args[0] if isinstance(args, (tuple, list)) and args else None
    if not isinstance(tensor, torch.Tensor):
        raise PatchError(f"{key}: a {kind!r} patch holds a tensor, got {type(tensor).__name__}")
    if tensor.shape != target.shape:
        raise PatchError(f"{key}: the {kind} patch has shape {tuple(tensor.shape)}, the weight "
                         f"{tuple(target.shape)} (a patch made for another model?)")
    if kind == "set":
        target.copy_(tensor)
    elif strength != 0.0:
        target.add_(fn(strength * tensor.to(target.device, torch.float32)))


def _kind(value: Any, key: str) -> tuple[str, Any]:
    if isinstance(value, tuple) and len(value) == 1:
        return "diff", value
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        kind, args = value
        if kind in ("diff", "set"):
            if kind == "diff" and len(args) > 1 and isinstance(args[1], dict) and args[1].get("pad_weight"):
                raise PatchError(f"{key}: a diff patch that pads the weight to a larger shape is not applied "
                                 f"by latentgraph")
            return kind, args
        raise PatchError(f"{key}: a {kind!r} patch is not one latentgraph applies (diff, set, a "
                         f"get_key_patches list, or latentgraph's LoRA patches)")
    raise PatchError(f"{key}: a patch of type {type(value).__name__} is not one latentgraph applies (expected "
                     f"(tensor,), ('diff', (tensor,)), ('set', (tensor,)) or a get_key_patches list)")


# -- copy-on-write module trees ---------------------------------------------------------------
def _shallow(module: nn.Module) -> nn.Module:
    """A new module object with its own parameter/buffer/module dicts, holding the same tensors."""
    twin = module.__class__.__new__(module.__class__)
    twin.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    return twin


class TreeCopy:
    """Copies of ``root`` and of the modules on the way to what is changed, made on demand."""

    def __init__(self, root: nn.Module):
        self.root = _shallow(root)
        self._copies: dict[str, nn.Module] = {"": self.root}

    def module(self, path: str) -> nn.Module:
        """The (copied) module at ``path``; raises PatchError naming a path that is not there."""
        if path in self._copies:
            return self._copies[path]
        parent_path, _, name = path.rpartition(".")
        parent = self.module(parent_path)
        child = parent._modules.get(name)
        if child is None:
            raise PatchError(f"no module {path!r} in the {type(self.root).__name__}")
        copy = parent._modules[name] = _shallow(child)
        self._copies[path] = copy
        return copy

    def set(self, name: str, value: Any) -> None:
        """Set the attribute, submodule or parameter ``name`` (dotted) to ``value``."""
        owner_path, _, attr = name.rpartition(".")
        owner = self.module(owner_path)
        if attr in owner._parameters and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            value = nn.Parameter(value, requires_grad=False)
        if attr in owner._modules and not isinstance(value, nn.Module) and value is not None:
            del owner._modules[attr]  # an object in a submodule's place (ComfyUI's set_attr does the same)
        setattr(owner, attr, value)


@torch.no_grad()
def apply_patches(module: nn.Module, grouped: dict[str, list[Entry]], label: str = "") -> nn.Module:
    """A copy of ``module`` with each named parameter patched (grouped: {parameter name:
    entries}); the weight keeps its dtype (or the layer's compute dtype: cast.patched_dtype)."""
    params = dict(module.named_parameters())
    tree = TreeCopy(module)
    for name, entries in grouped.items():
        base = params[name]
        weight = patched_weight(base, entries, label + name)
        owner = tree.module(name.rpartition(".")[0])
        tree.set(name, nn.Parameter(weight.to(base.device, patched_dtype(owner, base)),
                                    requires_grad=base.requires_grad))
    return tree.root
