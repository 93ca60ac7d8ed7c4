"""Hypernetworks (A1111's format, as ComfyUI's HypernetworkLoader reads it): small MLPs that
change the keys and values going into every attention whose input width they were made for:
``k + strength * mlp_k(k)``, ``v + strength * mlp_v(v)``, set as an ``attn1_patch`` and an
``attn2_patch`` (docs/model-options.md).

The file is a torch pickle: ``{width: [state dict of the k MLP, state dict of the v MLP], ...,
"activation_func": "relu", "is_layer_norm": False, "use_dropout": False, "activate_output":
False, "last_layer_dropout": False, ...}``; each state dict holds ``linear.N.weight/bias`` in
order (with ``is_layer_norm`` a LayerNorm's weight and bias follow each Linear). It is read
with ``torch.load(weights_only=True)``, which takes these plain values and refuses any other
object. A safetensors version is accepted too: tensors ``<width>.<0 for k|1 for v>.<name>``
and the settings as metadata strings (``"relu"``, ``"true"``/``"false"``).

Dropout (``use_dropout``) is left out: it is a training device. ComfyUI 0.3.64 builds its
Dropout layers in training mode, so its outputs with such a file are random.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import _torch_message

ACTIVATIONS = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
               "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish}
_FLAGS = ("is_layer_norm", "use_dropout", "activate_output", "last_layer_dropout")
MAX_FILE_BYTES = 2 << 30  # hypernetworks are tens to hundreds of MB; a bigger file is no hypernetwork


class HypernetworkError(ValueError):
    """A hypernetwork file could not be read or does not describe MLPs."""


def _read_safetensors(path: Path) -> dict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise HypernetworkError(f"{path}: not a readable safetensors file ({exc})") from None
    raw: dict = {"activation_func": meta.get("activation_func", "linear")}
    for flag in _FLAGS:
        value = meta.get(flag, "false").lower()
        if value not in ("true", "false"):
            raise HypernetworkError(f"{path}: metadata {flag} is {meta[flag]!r}, expected 'true' or 'false'")
        raw[flag] = value == "true"
    for key, tensor in tensors.items():
        parts = key.split(".", 2)
        if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("0", "1"):
            raise HypernetworkError(f"{path}: tensor {key!r} is not named <width>.<0|1>.<layer name>")
        pair = raw.setdefault(int(parts[0]), [{}, {}])
        pair[int(parts[1])][parts[2]] = tensor
    return raw


def read_hypernetwork(path: str | Path) -> dict:
    """The raw content of a hypernetwork file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise HypernetworkError(f"{path}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise HypernetworkError(f"{path}: {path.stat().st_size} bytes, over the {MAX_FILE_BYTES}-byte limit for "
                                f"a hypernetwork file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        detail = _torch_message(exc)
        if "Unsupported global" in detail:
            raise HypernetworkError(
                f"{path}: refused: the file needs Python objects that are not tensors or plain values to load "
                f"(torch.load(weights_only=True) said: {detail}). Only load pickles you trust; convert it to "
                f".safetensors to use it here.") from None
        raise HypernetworkError(f"{path}: not a readable PyTorch file ({detail})") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise HypernetworkError(f"{path}: not a readable PyTorch file ({_torch_message(exc)})") from None
    if not isinstance(raw, dict):
        raise HypernetworkError(f"{path}: holds a {type(raw).__name__}, not a hypernetwork's dict")
    return raw


def _mlp(layers: dict, width: int, which: str, settings: dict, source: str) -> nn.Sequential:
    """One MLP in ComfyUI's order: a Linear, its activation (not after the last entry unless
    activate_output), with is_layer_norm the LayerNorm whose weight is the next entry."""
    where = f"{source}: width {width}, {which}"
    if not isinstance(layers, dict) or not all(isinstance(v, torch.Tensor) for v in layers.values()):
        raise HypernetworkError(f"{where}: expected a state dict of tensors, got {type(layers).__name__}")
    names = [k[: -len(".weight")] for k in layers if k.endswith(".weight")]
    if not names:
        raise HypernetworkError(f"{where}: holds no layers")
    act = ACTIVATIONS[settings["activation_func"]]
    modules: list[nn.Module] = []
    i, features = 0, width
    while i < len(names):
        last = i == len(names) - 1
        weight, bias = layers[f"{names[i]}.weight"], layers.get(f"{names[i]}.bias")
        if weight.dim() != 2 or weight.shape[1] != features or bias is None or tuple(bias.shape) != weight.shape[:1]:
            raise HypernetworkError(f"{where}: layer {names[i]} has weight {tuple(weight.shape)} and bias "
                                    f"{None if bias is None else tuple(bias.shape)}; expected (n, {features}) "
                                    f"and (n,)")
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        modules.append(linear)
        features = weight.shape[0]
        if settings["activation_func"] != "linear" and (not last or settings["activate_output"]):
            modules.append(act())
        if settings["is_layer_norm"]:
            i += 1
            if i == len(names):
                raise HypernetworkError(f"{where}: is_layer_norm is set but layer {names[i - 1]} has no LayerNorm "
                                        f"after it")
            ln_w, ln_b = layers[f"{names[i]}.weight"], layers.get(f"{names[i]}.bias")
            if tuple(ln_w.shape) != (features,) or ln_b is None or tuple(ln_b.shape) != (features,):
                raise HypernetworkError(f"{where}: LayerNorm {names[i]} does not have {features} features")
            norm = nn.LayerNorm(features)
            norm.load_state_dict({"weight": ln_w, "bias": ln_b})
            modules.append(norm)
        i += 1
    if features != width:
        raise HypernetworkError(f"{where}: the last layer gives {features} features, not {width}")
    return nn.Sequential(*modules).eval().requires_grad_(False)


@dataclass
class Hypernetwork:
    """The MLPs of a file by attention input width: {width: (k MLP, v MLP)}."""

    mlps: dict[int, tuple[nn.Sequential, nn.Sequential]]
    settings: dict


def build_hypernetwork(raw: dict, source: str) -> Hypernetwork:
    settings = {"activation_func": raw.get("activation_func", "linear"),
                **{flag: bool(raw.get(flag, False)) for flag in _FLAGS}}
    if settings["activation_func"] not in ACTIVATIONS:
        raise HypernetworkError(f"{source}: activation_func {settings['activation_func']!r} is not one of "
                                f"{', '.join(ACTIVATIONS)}")
    mlps = {}
    for key, value in raw.items():
        if isinstance(key, str) and not key.isdigit():
            continue  # settings and bookkeeping (step, name, layer_structure, ...)
        width = int(key)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise HypernetworkError(f"{source}: width {width} holds {type(value).__name__}, expected a pair of "
                                    f"state dicts (k and v)")
        mlps[width] = (_mlp(value[0], width, "k", settings, source), _mlp(value[1], width, "v", settings, source))
    if not mlps:
        raise HypernetworkError(f"{source}: holds no MLPs (no width keys such as 320 or 768)")
    return Hypernetwork(mlps, settings)


class HypernetworkPatch:
    """The attn1/attn2 patch: keys and values of an attention whose input width has MLPs get
    ``x + strength * mlp(x)``; queries and other widths pass unchanged."""

    def __init__(self, net: Hypernetwork, strength: float):
        self.net, self.strength = net, strength
        self._placed: dict = {}

    def _on(self, width: int, like: torch.Tensor) -> tuple[nn.Module, nn.Module]:
        where = (width, like.device, like.dtype)
        if where not in self._placed:
            k, v = self.net.mlps[width]
            self._placed[where] = (k.to(like.device, like.dtype), v.to(like.device, like.dtype))
        return self._placed[where]

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> tuple:
        width = k.shape[-1]
        if width in self.net.mlps:
            mlp_k, mlp_v = self._on(width, k)
            k = k + mlp_k(k) * self.strength
            v = v + mlp_v(v) * self.strength
        return q, k, v

    def to(self, device):  # ComfyUI's patches have it; the MLPs are placed per call instead
        return self


def attention_widths(unet: nn.Module) -> set[int]:
    """The widths of the keys/values entering the UNet's attentions (what a hypernetwork keys on)."""
    return {m.to_k.in_features for m in unet.modules() if hasattr(m, "to_k") and isinstance(m.to_k, nn.Linear)}
