"""Weights in the dtype they run in, held once.

A file's tensors reach the dtype a network computes in in one of two ways:

* **at load** (``stream_into``): each tensor is converted and assigned on its own, and the pages
  of the file mapping it was read from are given back to the kernel right away, so reading an
  fp16 file into an fp32 network peaks at the network plus one tensor, not file plus network.
  A tensor already in the run dtype is assigned as it is: a view of the file's mapping, no copy
  (its pages are the page cache's, shared with every process that maps the same file).
* **at compute time** (``hold_in_file_dtype``): a network that runs once per prompt (text
  encoders, the VAE) keeps its weights in the file's narrower dtype and each layer casts its
  weight to the compute dtype as it runs. fp16/bf16 -> fp32 is exact, so the results are bit
  for bit those of a network converted at load, in half the memory.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Iterable

import torch
from torch import nn

# -- giving file pages back ------------------------------------------------------------------
_MADV_DONTNEED = 4  # Linux's value; other systems keep their pages (only the peak is higher)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.madvise.restype = ctypes.c_int
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


def file_mappings(path: str | os.PathLike) -> list[tuple[int, int]]:
    """Address ranges of this process's private mappings of ``path`` (how safetensors and
    torch.load(mmap=True) read a file), from /proc/self/maps; [] where there is none to read."""
    if _LIBC is None:
        return []
    try:
        want = os.path.realpath(path)
        if not os.path.isfile(want):
            return []
        with open("/proc/self/maps") as f:
            lines = f.read().splitlines()
    except (OSError, TypeError, ValueError):
        return []
    found = []
    for line in lines:
        parts = line.split(maxsplit=5)
        # only private (copy-on-write) mappings: a clean page of one comes back from the file
        if len(parts) == 6 and parts[5] == want and parts[1].endswith("p"):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            found.append((start, end))
    return found


def give_back(t: torch.Tensor, mappings: list[tuple[int, int]]) -> int:
    """Drop from this process's memory the whole pages that only ``t`` (a view of a private file
    mapping, never written) covers; returns the bytes dropped. The kernel re-reads them from the
    file if the view is read again, so a caller's view still reads the file's values. Anything
    not inside one of ``mappings`` (an allocation of ours) is left alone."""
    if not mappings or t.device.type != "cpu" or t.numel() == 0:
        return 0
    start = t.data_ptr()
    span = sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0) + 1
    end = start + span * t.element_size()
    if not any(lo <= start and end <= hi for lo, hi in mappings):
        return 0
    first = -(-start // _PAGE) * _PAGE  # whole pages only: the edges may hold a neighbour's bytes
    last = end // _PAGE * _PAGE
    if last <= first:
        return 0
    if _LIBC.madvise(first, last - first, _MADV_DONTNEED) != 0:
        return 0
    return last - first


# -- streaming a state dict into a module ------------------------------------------------------
def _anchor(module: nn.Module, owner: str) -> str:
    """The module whose load_state_dict receives ``owner``'s tensors: the owner, or its highest
    ancestor with its own loading code (a hook or an overridden _load_from_state_dict, like the
    VAE's AttnBlock that reshapes Linear weights), so that code sees the tensors as before."""
    best, path = owner, ""
    parts = owner.split(".") if owner else []
    node = module
    for i in range(len(parts) + 1):
        if i:
            node = node._modules.get(parts[i - 1])
            if node is None:
                return best
            path = ".".join(parts[:i])
        custom = type(node)._load_from_state_dict is not nn.Module._load_from_state_dict
        if custom or node._load_state_dict_pre_hooks or node._load_state_dict_post_hooks:
            return path
    return best


def _groups(module: nn.Module, keys: Iterable[str]) -> dict[str, list[str]]:
    """Keys by the module that loads them (see _anchor), in first-seen order."""
    anchors: dict[str, str] = {}
    groups: dict[str, list[str]] = {}
    for key in keys:
        owner = key.rpartition(".")[0]
        if owner not in anchors:
            anchors[owner] = _anchor(module, owner)
        groups.setdefault(anchors[owner], []).append(key)
    return groups


def converted(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` in ``dtype`` (floating point only); ``t`` itself, not a copy, when it already is."""
    if dtype is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    return t.to(dtype)


@torch.no_grad()
def stream_into(module: nn.Module, sd: dict[str, torch.Tensor], dtype: torch.dtype | None,
                source: str | os.PathLike | None = None, held: Callable[[str], bool] | None = None) -> int:
    """Assign every tensor of ``sd`` (keys already checked against the module) to ``module``,
    one loading module at a time: convert its tensors, assign them (load_state_dict with
    assign=True, the module's own hooks included), give their file pages back. The peak is the
    module plus one group's tensors. Keys for which ``held(key)`` is true keep the file's dtype
    (see hold_in_file_dtype). Returns the bytes of file pages given back."""
    mappings = file_mappings(source) if source is not None else []
    dropped = 0
    for anchor, keys in _groups(module, sd).items():
        cut = len(anchor) + 1 if anchor else 0
        part, copied = {}, []
        for key in keys:
            part[key[cut:]] = new = sd[key] if held is not None and held(key) else converted(sd[key], dtype)
            if new is not sd[key]:
                copied.append(sd[key])
        module.get_submodule(anchor).load_state_dict(part, strict=False, assign=True)
        del part
        # the source was read once into its converted copy: its pages are not needed again
        dropped += sum(give_back(src, mappings) for src in copied)
    return dropped


# -- holding weights in the file's dtype, casting per call -----------------------------------
# Each cast layer computes with ``weight.to(x.dtype)``: fp16/bf16 -> fp32 is exact, so the
# layer's output is bit for bit that of the same layer converted at load. The layer classes
# are fp8.py's (the same per-call cast); what differs is what patches store (patched_dtype).
def _cast_classes() -> dict[type, type]:
    from .fp8 import CAST_CLASSES

    return CAST_CLASSES


def castable(layer: nn.Module) -> bool:
    """Whether ``layer`` can hold its weights in another dtype than it computes in."""
    classes = _cast_classes()
    return type(layer) in classes or type(layer) in classes.values()


def held_layers(module: nn.Module, skip: tuple[str, ...] = ()) -> set[str]:
    """Names of the castable layers of ``module`` (not under one of the ``skip`` prefixes)."""
    return {name for name, layer in module.named_modules()
            if castable(layer) and not any(name == s or name.startswith(s + ".") for s in skip)}


def narrower(dtype: torch.dtype, compute: torch.dtype | None) -> bool:
    """A floating dtype with fewer bits than ``compute`` (fp16/bf16 under fp32)."""
    return (compute is not None and dtype.is_floating_point and compute.is_floating_point
            and torch.finfo(dtype).bits < torch.finfo(compute).bits)


def holds(layers: set[str], sd: dict[str, torch.Tensor], compute: torch.dtype | None) -> Callable[[str], bool]:
    """``held`` for stream_into: a weight of one of ``layers`` stays as the file has it when
    that is narrower than the compute dtype (a wider one is converted: nothing to gain)."""
    return lambda key: key.rpartition(".")[0] in layers and narrower(sd[key].dtype, compute)


def hold_in_file_dtype(module: nn.Module, layers: set[str], compute: torch.dtype | None) -> int:
    """Turn the ``layers`` of ``module`` whose weights are not in ``compute`` into cast layers
    (in place; names and state-dict keys unchanged) and note ``compute`` on each as
    ``patch_dtype``: a LoRA or merge that rewrites such a weight stores it in ``compute``, as it
    would for the converted layer. Returns the number of layers turned."""
    if compute is None:
        return 0
    classes = _cast_classes()
    turned = 0
    for name in sorted(layers):
        layer = module.get_submodule(name)
        if all(p.dtype == compute for p in layer.parameters(recurse=False)):
            continue
        cls = classes.get(type(layer))
        if cls is not None:
            layer.__class__ = cls
        layer.patch_dtype = compute
        turned += 1
    return turned


def patched_dtype(layer: nn.Module, weight: torch.Tensor) -> torch.dtype:
    """The dtype a rewritten weight of ``layer`` is stored in: the compute dtype of a layer held
    in the file's dtype (so patching it gives the converted layer's result), else the weight's."""
    return getattr(layer, "patch_dtype", None) or weight.dtype


def parameter_bytes(module: nn.Module) -> int:
    """Bytes of the module's parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total
