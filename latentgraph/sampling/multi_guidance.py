"""Guidance over more than two conditionings (ComfyUI's DualCFGGuider and PerpNegGuider): the
area bookkeeping across all of them and the Perp-Neg combination."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from .guidance import Cond, _area_inside


def _give_area(target: list[Cond], c: Cond) -> None:
    """Give ``target`` an entry over c's area, copied from its smallest entry covering it
    (ComfyUI's create_cond_with_same_area_if_none)."""
    if c.area is None:
        return
    smallest = None
    for other in target:
        if other.area is None:
            smallest = smallest or other
        elif _area_inside(c.area, other.area):
            if smallest is None or smallest.area is None or math.prod(smallest.area[:2]) > math.prod(other.area[:2]):
                smallest = other
    if smallest is not None and smallest.area != c.area:
        target.append(replace(c, context=smallest.context, y=smallest.y, concat=smallest.concat))


def opposite_areas(conds: dict[str, list[Cond]]) -> dict[str, list[Cond]]:
    """Every area entry of one conditioning gets a same-area entry in each other one, in ComfyUI's
    order (key by key; entries given to a later key are themselves passed on), for guiders with
    more than two conditionings."""
    out = {key: list(value) for key, value in conds.items()}
    for key, entries in out.items():
        for c in entries:
            for other, target in out.items():
                if other != key:
                    _give_area(target, c)
    return out


def perp_neg(pos_pred: torch.Tensor, neg_pred: torch.Tensor, empty_pred: torch.Tensor, neg_scale: float,
             cond_scale: float) -> torch.Tensor:
    """Perp-Neg (Armandpour et al. 2023): guide by the positive direction minus the part of the
    negative direction perpendicular to it (directions from the empty prompt's prediction)."""
    pos = pos_pred - empty_pred
    neg = neg_pred - empty_pred
    perp = neg - (neg * pos).sum() / torch.norm(pos) ** 2 * pos
    return empty_pred + cond_scale * (pos - perp * neg_scale)
