"""Merging two networks of the same architecture, weight by weight, as ComfyUI's merge nodes do.

ComfyUI merges lazily: it adds, to a clone of the first model, one patch per key of the second
with two factors, ``strength_model`` (what the first model's weight is multiplied by) and
``strength_patch`` (what the second's is), and combines them when the model is loaded for
sampling or saving::

    w = w1 * strength_model      (skipped when strength_model is 1)
    w = w + strength_patch * w2  (skipped when strength_patch is 0)

in float32, then cast back to w1's dtype. The nodes' factors:

    ModelMergeSimple(ratio)        ratio,        1 - ratio    (ratio is the weight of model1)
    ModelMergeBlocks(input, middle, out): the same per key, by the longest of the three names
                                   that starts the key (``out`` also starts ``output_blocks``);
                                   other keys (time_embed, label_emb) take ``input``
    ModelMergeSubtract(multiplier) multiplier,   -multiplier  (multiplier * (w1 - w2))
    ModelMergeAdd                  1,            1            (w1 + w2)

Here the merged weights are computed once, when the node runs, into a twin of the first
network that shares nothing it does not need to (models/lora.py's twin: new module objects,
the same tensors for the weights not merged). This is LoRA's mechanism too, so merges and LoRAs
chain in the order the graph applies them, as ComfyUI's patch lists do: a LoRA on model1 before
the merge is merged (``ratio * (w1 + lora)``), a LoRA after it is added to the merged weight.
The cost is one copy of the merged weights, held as long as the result is cached.

ComfyUI merges a key only if both models have it, and when two weights of a key differ in shape
it logs a warning and leaves the first model's weight (scaled by ``strength_model``: with a
ratio below 1 that weight is silently shrunk). Here both models must have the same weight names
and shapes; otherwise the merge is refused with the first keys that differ.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .cast import patched_dtype
from .lora import _twin

# parameter names ComfyUI leaves out of CLIP merges (a buffer of ids, and CLIP's contrastive
# temperature, which text encoding does not use)
CLIP_SKIP_SUFFIXES = (".position_ids", ".logit_scale")

Factors = Callable[[str], tuple[float, float]]  # parameter name -> (strength_model, strength_patch)


class MergeError(ValueError):
    """Two networks cannot be merged weight by weight."""


def simple(ratio: float) -> Factors:
    return lambda name: (ratio, 1.0 - ratio)


def subtract(multiplier: float) -> Factors:
    return lambda name: (multiplier, -multiplier)


def add() -> Factors:
    return lambda name: (1.0, 1.0)


def blocks(ratios: dict[str, float]) -> Factors:
    """ModelMergeBlocks' rule: the ratio of the longest name in ``ratios`` (in order: its first
    is the default) that starts the parameter's name."""
    default = next(iter(ratios.values()))

    def factors(name: str) -> tuple[float, float]:
        best, ratio = 0, default
        for prefix, value in ratios.items():
            if name.startswith(prefix) and len(prefix) > best:
                best, ratio = len(prefix), value
        return ratio, 1.0 - ratio

    return factors


def _show(names: list[str], limit: int = 3) -> str:
    more = f" ... ({len(names)} in all)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_same_layout(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], what: str,
                      key: Callable[[str], str] = str) -> None:
    """Raise MergeError naming the first keys (``key``: how a file would name them) that one
    network has and the other lacks, or whose shapes differ."""
    only_first = sorted(set(first) - set(second))
    only_second = sorted(set(second) - set(first))
    wrong = [f"{key(n)} {tuple(first[n].shape)} vs {tuple(second[n].shape)}"
             for n in first if n in second and first[n].shape != second[n].shape]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} weights differ in shape (first, second): {_show(wrong)}")
    if only_first:
        problems.append(f"{len(only_first)} weights only in the first: {_show([key(n) for n in only_first])}")
    if only_second:
        problems.append(f"{len(only_second)} weights only in the second: {_show([key(n) for n in only_second])}")
    if problems:
        raise MergeError(f"{what}: the two models do not have the same architecture, so they cannot be merged "
                         f"weight by weight ({'; '.join(problems)}). ComfyUI would merge what fits and keep the "
                         f"rest of the first model (scaled by the ratio); latentgraph refuses")


def merged_weight(w1: torch.Tensor, w2: torch.Tensor, strength_model: float, strength_patch: float,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """ComfyUI's arithmetic for one weight: in float32, ``w1 * strength_model`` then
    ``+ strength_patch * w2``, each step skipped when it would change nothing; in ``dtype``
    (default w1's)."""
    w = w1.to(torch.float32, copy=True)
    if strength_model != 1.0:
        w *= strength_model
    if strength_patch != 0.0:
        w += strength_patch * w2.to(w.device, torch.float32)
    return w.to(dtype or w1.dtype)


@torch.no_grad()
def merge_modules(first: nn.Module, second: nn.Module, factors: Factors, what: str,
                  key: Callable[[str], str] = str, skip: tuple[str, ...] = ()) -> nn.Module:
    """A twin of ``first`` whose parameters are merged with ``second``'s by ``factors``
    (parameters whose name ends with one of ``skip`` are left as first's). Neither input is
    changed; a parameter whose factors are (1, 0) stays first's own tensor."""
    p1, p2 = dict(first.named_parameters()), dict(second.named_parameters())
    check_same_layout(p1, p2, what, key)
    twin = _twin(first, {})
    for name, w1 in p1.items():
        if name.endswith(skip):
            continue
        strength_model, strength_patch = factors(name)
        if strength_model == 1.0 and strength_patch == 0.0:
            continue
        owner, _, attr = name.rpartition(".")
        layer = twin.get_submodule(owner)  # a layer held in an fp16 file's dtype stores it in its compute dtype
        merged = merged_weight(w1, p2[name], strength_model, strength_patch, patched_dtype(layer, w1))
        setattr(layer, attr, nn.Parameter(merged, requires_grad=w1.requires_grad))
    return twin


def merge_encoders(first: dict[str, nn.Module], second: dict[str, nn.Module], factors: Factors,
                   what: str) -> dict[str, nn.Module]:
    """CLIP merges: each text encoder of ``first`` with the one of the same name in ``second``
    (position_ids and logit_scale left out, as ComfyUI)."""
    if set(first) != set(second):
        raise MergeError(f"{what}: the two CLIP models have different text encoders ({', '.join(sorted(first))} vs "
                         f"{', '.join(sorted(second))}): they come from different model families")
    return {name: merge_modules(enc, second[name], factors, f"{what} (text encoder '{name}')",
                                skip=CLIP_SKIP_SUFFIXES)
            for name, enc in first.items()}
