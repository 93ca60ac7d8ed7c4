"""Classifier-free guidance over lists of conditioning entries, as ComfyUI computes it.

Each prompt is a list of ``Cond`` entries. At every step each entry that is active (its
timestep range) predicts the denoised latent over its area, weighted by its strength, its
mask and (for areas) a feathered edge; a prompt's prediction is the weighted average of its
entries' (ConditioningCombine). Entries whose inputs have the same shape run in one model
call, the negative prompt's first (ComfyUI orders the batch [uncond, cond]; another order
moves results by ~1e-6). Then ``uncond + (cond - uncond) * cfg``; with cfg == 1 the negative
prompt is not evaluated at all (unless ``disable_cfg1_optimization``).

The model's ``model_options`` (ComfyUI's, see models/patcher.py and docs/model-options.md) are
called here as ComfyUI's samplers.py calls them: ``model_function_wrapper`` around each model
call, ``sampler_calc_cond_batch_function``, ``sampler_pre_cfg_function``,
``sampler_cfg_function`` and ``sampler_post_cfg_function`` with its argument dicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

# apply_model(x (B,C,h,w), sigma (B,), c_crossattn=(B,T,D), y=(B,adm), c_concat=(B,c,h,w),
#             transformer_options=dict) -> denoised; y and c_concat only when the entries have them
ApplyModel = Callable[..., torch.Tensor]
COND, UNCOND = 0, 1  # the cond_or_uncond labels of a batch's chunks (ComfyUI's)
_CFG_KEYS = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function")
AREA_FEATHER = 8  # latent pixels of linear fade at an area's inner edges


@dataclass
class Cond:
    """One conditioning entry, resolved for sampling (areas and masks in latent pixels)."""

    context: torch.Tensor  # (1 or B, T, D) cross-attention tokens
    y: torch.Tensor | None = None  # (1 or B, adm) vector conditioning (SDXL)
    concat: torch.Tensor | None = None  # (1 or B, c, H, W) extra input channels (inpainting models)
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent pixels
    strength: float = 1.0
    mask: torch.Tensor | None = None  # (1 or B, H, W) at latent size
    mask_strength: float = 1.0
    sigma_start: float | None = None  # active while sigma <= sigma_start
    sigma_end: float | None = None  # ... and sigma >= sigma_end
    # a ControlNet chain (models.controlnet.Control): get_control(x, sigma, c, chunks, model) -> residuals
    control: object | None = None
    control_apply_to_uncond: bool = False  # the old ControlNetApply: the negative prompt gets it too
    # GLIGEN boxes: (models.gligen.GLIGEN, [(pooled (1, D), h, w, y, x) in latent pixels, ...])
    gligen: tuple | None = None


@dataclass
class _Run:
    """An active entry at one step: its input crop, weights and model inputs."""

    x: torch.Tensor
    mult: torch.Tensor
    context: torch.Tensor
    y: torch.Tensor | None
    concat: torch.Tensor | None
    area: tuple | None
    which: int  # 0 = positive, 1 = negative
    control: object | None = None
    gligen: tuple | None = None
    uuid: int = 0  # the entry's identity for this run (ComfyUI's per-cond uuid; EasyCache keys on it)


def _repeat_to(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat along the batch axis to exactly n (ComfyUI's repeat_to_batch_size)."""
    if t.shape[0] > n:
        return t[:n]
    if t.shape[0] < n:
        return t.repeat(math.ceil(n / t.shape[0]), *([1] * (t.ndim - 1)))[:n]
    return t


def _prepare(c: Cond, which: int, x: torch.Tensor, sigma: torch.Tensor) -> _Run | None:
    s = float(sigma.reshape(-1)[0])
    if c.sigma_start is not None and s > c.sigma_start:
        return None
    if c.sigma_end is not None and s < c.sigma_end:
        return None
    B, C, H, W = x.shape
    area = None
    crop = x
    if c.area is not None:
        h, w, top, left = c.area
        h, w = min(H - top, h), min(W - left, w)
        area = (h, w, top, left)
        crop = x[:, :, top:top + h, left:left + w]
    if c.mask is not None:
        mask = c.mask[:B]
        if area is not None:
            mask = mask[:, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        mask = (mask * c.mask_strength).unsqueeze(1)
        mask = mask.repeat(B // mask.shape[0], C, 1, 1)
    else:
        mask = torch.ones_like(crop)
    mult = mask * c.strength
    if c.mask is None and area is not None:
        h, w, top, left = area
        for axis, (size, start, full) in enumerate(((h, top, H), (w, left, W))):
            rr = min(AREA_FEATHER, mult.shape[2 + axis] // 4)
            for t in range(rr):  # fade in at edges that are inside the latent
                if start != 0:
                    mult.narrow(2 + axis, t, 1).mul_((t + 1) / rr)
                if size + start < full:
                    mult.narrow(2 + axis, size - 1 - t, 1).mul_((t + 1) / rr)
    y = _repeat_to(c.y, B) if c.y is not None else None
    concat = None
    if c.concat is not None:
        concat = c.concat
        if area is not None:
            concat = concat[:, :, area[2]:area[2] + area[0], area[3]:area[3] + area[1]]
        concat = _repeat_to(concat, B)
    return _Run(crop, mult, _repeat_to(c.context, B), y, concat, area, which, c.control, c.gligen, id(c))


def _compatible(a: _Run, b: _Run) -> bool:
    if a.x.shape != b.x.shape or a.control is not b.control:  # one control per batched call, as ComfyUI
        return False
    if a.gligen is not None or b.gligen is not None:  # ComfyUI runs an entry with boxes on its own
        return a is b
    if (a.y is None) != (b.y is None) or (a.y is not None and a.y.shape != b.y.shape):
        return False
    if (a.concat is None) != (b.concat is None) or (a.concat is not None and a.concat.shape != b.concat.shape):
        return False
    ta, tb = a.context.shape, b.context.shape
    if ta != tb:  # different token counts batch together when one divides their lcm <= 4x
        if ta[0] != tb[0] or ta[2] != tb[2] or math.lcm(ta[1], tb[1]) // min(ta[1], tb[1]) > 4:
            return False
    return True


def _cat_context(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along the batch, repeating shorter token lists to the lcm length (repeated
    keys and values leave attention's result unchanged)."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in contexts])


def _model_call(apply_model: ApplyModel, runs: list[_Run], sigma: torch.Tensor, model_options: dict,
                model=None) -> torch.Tensor:
    """One batched model call for ``runs``, through ``model_function_wrapper`` if set; their
    control (the same for all, see _compatible) computed for this call's inputs."""
    n = len(runs)
    xb = torch.cat([r.x for r in runs])
    sb = torch.cat([sigma] * n)
    c = {"c_crossattn": _cat_context([r.context for r in runs])}
    if runs[0].y is not None:
        c["y"] = torch.cat([r.y for r in runs])
    if runs[0].concat is not None:
        c["c_concat"] = torch.cat([r.concat for r in runs])
    cond_or_uncond = [r.which for r in runs]
    # a fresh dict per call: the UNet writes the block ids into it as it goes
    to = dict(model_options.get("transformer_options", {}))
    to["cond_or_uncond"], to["sigmas"] = cond_or_uncond[:], sigma
    to["uuids"] = [r.uuid for r in runs]
    c["transformer_options"] = to
    if runs[0].gligen is not None:  # the boxes' middle_patch, after the model's own (ComfyUI's order)
        gligen, boxes = runs[0].gligen
        patches = dict(to.get("patches", {}))
        patches["middle_patch"] = [*patches.get("middle_patch", ()), gligen.position_patch(xb.shape, boxes)]
        to["patches"] = patches
    control = runs[0].control
    if control is not None:
        if model is None:
            raise ValueError("a conditioning with a ControlNet needs the MODEL being sampled (its noise schedule)")
        residuals = control.get_control(xb, sb, c, n, model)
        if residuals is not None:
            c["control"] = residuals
    wrapper = model_options.get("model_function_wrapper")
    if wrapper is None:
        return apply_model(xb, sb, **c)
    return wrapper(apply_model, {"input": xb, "timestep": sb, "c": c, "cond_or_uncond": cond_or_uncond})


def calc_cond_batch(apply_model: ApplyModel, prompts: list[list[Cond] | None], x: torch.Tensor,
                    sigma: torch.Tensor, model_options: dict | None = None, model=None) -> list[torch.Tensor]:
    """The denoised prediction of each prompt at (x, sigma): entries averaged by weight
    (a prompt given as None predicts zeros). ``model`` (the MODEL) is what controls need."""
    model_options = {} if model_options is None else model_options
    outs = [torch.zeros_like(x) for _ in prompts]
    counts = [torch.full_like(x, 1e-37) for _ in prompts]
    pending = [run for which, conds in enumerate(prompts) if conds is not None
               for c in conds if (run := _prepare(c, which, x, sigma)) is not None]
    while pending:
        first = pending[0]
        group = [i for i, run in enumerate(pending) if _compatible(run, first)]
        group.reverse()  # later entries first: the negative prompt leads the batch, as in ComfyUI
        runs = [pending[i] for i in group]
        for i in sorted(group, reverse=True):
            pending.pop(i)
        out = _model_call(apply_model, runs, sigma, model_options, model).chunk(len(runs))
        for r, o in zip(runs, out):
            target, count = outs[r.which], counts[r.which]
            if r.area is not None:
                h, w, top, left = r.area
                target = target[:, :, top:top + h, left:left + w]
                count = count[:, :, top:top + h, left:left + w]
            target += o * r.mult
            count += r.mult
    return [o / c for o, c in zip(outs, counts)]


def cfg_function(model, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float, x: torch.Tensor,
                 sigma: torch.Tensor, model_options: dict, cond=None, uncond=None) -> torch.Tensor:
    """Guidance: ``sampler_cfg_function`` (in noise space: it gets x - prediction and returns
    a noise, turned back into x - result) or the standard formula, then each
    ``sampler_post_cfg_function`` on the denoised result. ComfyUI's argument dicts."""
    cfg_fn = model_options.get("sampler_cfg_function")
    if cfg_fn is None:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    else:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": sigma,
                "input": x, "sigma": sigma, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options, "input_cond": cond, "input_uncond": uncond}
        result = x - cfg_fn(args)
    for fn in model_options.get("sampler_post_cfg_function", ()):
        result = fn({"denoised": result, "cond": cond, "uncond": uncond, "cond_scale": cond_scale, "model": model,
                     "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": sigma,
                     "model_options": model_options, "input": x})
    return result


class CFGDenoiser:
    """The denoiser samplers call: ``denoiser(x, sigma) -> denoised`` with guidance.
    ``model`` is what the cfg functions get as args["model"] (the MODEL value)."""

    def __init__(self, apply_model: ApplyModel, positive: list[Cond], negative: list[Cond], cfg: float,
                 model_options: dict | None = None, model=None):
        self.apply_model = apply_model
        negative = gligen_to_uncond(positive, control_to_uncond(positive, negative))
        self.positive, self.negative, self.cfg = positive, negative, cfg
        self.model_options = {} if model_options is None else model_options
        self.model = model

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
        # a sampler may hand its own options for the call (ComfyUI's extra_args["model_options"]:
        # the cfg_pp samplers add a sampler_post_cfg_function that reads the uncond prediction)
        opts = self.model_options if model_options is None else model_options
        skip_uncond = math.isclose(self.cfg, 1.0) and not opts.get("disable_cfg1_optimization", False)
        negative = None if skip_uncond else self.negative
        conds = [self.positive, negative]
        batch_fn = opts.get("sampler_calc_cond_batch_function")
        if batch_fn is None:
            out = calc_cond_batch(self.apply_model, conds, x, sigma, opts, self.model)
        else:
            out = batch_fn({"conds": conds, "input": x, "sigma": sigma, "model": self.model, "model_options": opts})
        if negative is None and not any(k in opts for k in _CFG_KEYS):
            return out[0]  # cfg 1 with nothing to call: the positive prediction (the formula's, exactly)
        for fn in opts.get("sampler_pre_cfg_function", ()):
            out = fn({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": sigma, "input": x,
                      "sigma": sigma, "model": self.model, "model_options": opts})
        return cfg_function(self.model, out[0], out[1], self.cfg, x, sigma, opts, self.positive, negative)


def control_to_uncond(positive: list[Cond], negative: list[Cond]) -> list[Cond]:
    """The negative prompt with the controls of ControlNetApply (old node) entries."""
    controls = [c.control for c in positive if c.control_apply_to_uncond and c.area is None and c.control is not None]
    return _give_to_uncond(controls, negative, "control")


def gligen_to_uncond(positive: list[Cond], negative: list[Cond]) -> list[Cond]:
    """The negative prompt with the positive prompt's GLIGEN boxes (of entries without an area)."""
    boxes = [c.gligen for c in positive if c.area is None and c.gligen is not None]
    return _give_to_uncond(boxes, negative, "gligen")


def _give_to_uncond(values: list, negative: list[Cond], field_name: str) -> list[Cond]:
    """ComfyUI's rule for controls and GLIGEN boxes: unless a negative entry without an area
    already has ``field_name`` set, each of ``values`` goes to a negative entry without an area,
    in turn (the last one given to an entry stays)."""
    if not values or any(getattr(c, field_name) is not None for c in negative if c.area is None):
        return negative
    free = [i for i, c in enumerate(negative) if c.area is None]
    if not free:
        return negative
    out = list(negative)
    for k, value in enumerate(values):
        i = free[k % len(free)]
        out[i] = replace(out[i], **{field_name: value})
    return out


def _area_inside(a: tuple, b: tuple) -> bool:
    """Whether area a (h, w, y, x) lies within area b."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def add_opposite_areas(positive: list[Cond], negative: list[Cond]) -> tuple[list[Cond], list[Cond]]:
    """For each area entry of one prompt, give the other prompt an entry over the same area
    (copied from its smallest entry covering it), so both predictions cover it alike."""
    pos, neg = list(positive), list(negative)
    for source, target in ((positive, neg), (negative, pos)):
        for c in source:
            if c.area is None:
                continue
            smallest = None
            for other in target:
                if other.area is None:
                    smallest = smallest or other
                elif _area_inside(c.area, other.area):
                    if smallest is None or smallest.area is None or \
                            math.prod(smallest.area[:2]) > math.prod(other.area[:2]):
                        smallest = other
            if smallest is None or smallest.area == c.area:
                continue
            target.append(replace(c, context=smallest.context, y=smallest.y, concat=smallest.concat))
    return pos, neg


def resize_mask(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A mask (B, H, W) or (H, W) bilinearly resized to latent size (B, h, w)."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.shape[-2:] == (height, width):
        return mask
    return F.interpolate(mask[:, None].float(), size=(height, width), mode="bilinear")[:, 0]
