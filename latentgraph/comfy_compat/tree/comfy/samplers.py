"""ComfyUI's ``comfy.samplers``: the sampler and scheduler names packs put in their combos, the
KSampler object, SAMPLER values (KSAMPLER), CFGGuider and the guidance functions, over
latentgraph's sampling.

What runs is latentgraph's own path (latentgraph/sampling/ksampler.py through the GUIDER of
latentgraph/nodes/custom_sampling.py), so a pack calling ``KSampler(...).sample(...)`` gets
exactly what latentgraph's KSampler node gives for the same settings. A ``KSAMPLER`` is a
latentgraph SAMPLER value (a ``SamplerChoice``): one a pack builds over its own k-diffusion style
function runs in latentgraph's SamplerCustom and SamplerCustomAdvanced.

A CFGGuider keeps ``original_conds`` converted as ComfyUI does (comfy.sampler_helpers.convert_cond).
Inside sampling its ``inner_model`` is the MODEL value and its ``conds`` hold latentgraph's
resolved conditioning entries (``sampling.guidance.Cond``) rather than ComfyUI's processed dicts:
a pack that overrides ``predict_noise`` and hands them to ``sampling_function``/``calc_cond_batch``
gets ComfyUI's arithmetic; one that reads the processed dicts' keys does not find them.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.nodes.custom_sampling import Guider
from latentgraph.sampling import guidance as _guidance
from latentgraph.sampling.ksampler import SamplerChoice, trim_sigmas
from latentgraph.sampling.multi_guidance import opposite_areas as _opposite_areas
from latentgraph.sampling.samplers import SAMPLER_NAMES as _OURS
from latentgraph.sampling.samplers import SAMPLERS as _REGISTRY
from latentgraph.sampling.schedulers import DISCARD_PENULTIMATE, SCHEDULER_NAMES as _SCHEDULER_NAMES
from latentgraph.sampling.schedulers import SCHEDULERS as _SCHEDULERS
from latentgraph.sampling.schedulers import compute_sigmas, scheduler_sigmas
from latentgraph.sampling.uni_pc import sample_uni_pc, sample_uni_pc_bh2

from .k_diffusion import sampling as k_diffusion_sampling
from .k_diffusion.sampling import _ReplacementNotice

# ComfyUI's lists (its order), as lists of the layer's own: packs extend them without reaching
# latentgraph's combos
_BUILT_ELSEWHERE = ["ddim", "uni_pc", "uni_pc_bh2"]
KSAMPLER_NAMES = [name for name in _OURS if name not in _BUILT_ELSEWHERE]
SAMPLER_NAMES = KSAMPLER_NAMES + _BUILT_ELSEWHERE
SCHEDULER_NAMES = list(_SCHEDULER_NAMES)


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


sys.modules[__name__].__class__ = _ReplacementNotice  # a pack replacing a function here is told what follows it


def _check_model(model: Any, where: str) -> None:
    if not all(hasattr(model, a) for a in ("schedule", "placement", "apply_model", "model_options")):
        raise TypeError(f"{where}: expected a MODEL value (what a checkpoint loader gives), got {type(model).__name__}")


def _check_schedule(model_sampling: Any, where: str) -> None:
    if not all(hasattr(model_sampling, a) for a in ("sigmas", "sigma_min", "sigma_max")):
        raise TypeError(f"{where}: expected a model's noise schedule (model_sampling: sigmas, sigma_min, sigma_max), "
                        f"got {type(model_sampling).__name__}")


class Sampler:
    """ComfyUI's base class of SAMPLER values."""

    def max_denoise(self, model_wrap, sigmas: torch.Tensor) -> bool:
        """Whether sigmas start at (or above) the model's largest sigma: the noise then replaces
        the latent rather than being added to it."""
        inner = model_wrap.inner_model
        schedule = getattr(inner, "model_sampling", None)
        schedule = inner.schedule if schedule is None else schedule
        max_sigma, sigma = float(schedule.sigma_max), float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler, SamplerChoice):
    """A SAMPLER over a k-diffusion style function ``fn(model, x, sigmas, extra_args=None,
    callback=None, disable=None, **extra_options)``. ``inpaint_options={"random": True}`` is
    ddim's rule: inside an inpainting mask the known latent is re-noised with noise from seed + 1.
    It is latentgraph's SamplerChoice, so latentgraph's sampler nodes run it."""

    def __init__(self, sampler_function: Callable, extra_options: dict | None = None,
                 inpaint_options: dict | None = None):
        if not callable(sampler_function):
            raise TypeError(f"comfy.samplers.KSAMPLER: sampler_function must be callable, got "
                            f"{type(sampler_function).__name__}")
        self.sampler_function = sampler_function
        self.extra_options = {} if extra_options is None else extra_options
        self.inpaint_options = {} if inpaint_options is None else inpaint_options

    # packs set and read these attributes as on ComfyUI's (mutable) object
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    @property
    def sampler_name(self) -> str:
        """The name latentgraph's sampling knows this sampler by ("ddim" carries the inpainting
        rule; a pack's own function is named after itself)."""
        if self.inpaint_options.get("random", False):
            return "ddim"
        for name, fn in _REGISTRY.items():
            if fn is self.sampler_function:
                return name
        return getattr(self.sampler_function, "__name__", type(self.sampler_function).__name__)

    def sample(self, *args, **kwargs):
        """Not provided: latentgraph's sampling calls the function itself (see the module)."""
        raise runtime.missing(__name__, "KSAMPLER.sample")


def ksampler(sampler_name: str, extra_options: dict | None = None, inpaint_options: dict | None = None) -> KSAMPLER:
    """The KSAMPLER of a k-diffusion sampler (``comfy.k_diffusion.sampling.sample_<name>``)."""
    if sampler_name in ("dpm_fast", "dpm_adaptive"):  # over a sigma list, as KSampler hands them one
        function = _REGISTRY[sampler_name]
    else:
        function = getattr(k_diffusion_sampling, f"sample_{sampler_name}", None) \
            if isinstance(sampler_name, str) and sampler_name.isidentifier() else None
        if function is None:
            raise ValueError(f"comfy.samplers.ksampler: unknown sampler {sampler_name!r}; expected one of "
                             f"{', '.join(KSAMPLER_NAMES)}")
    return KSAMPLER(function, extra_options, inpaint_options)


def sampler_object(name: str) -> KSAMPLER:
    """The SAMPLER value of a KSampler sampler name (what KSamplerSelect gives in ComfyUI)."""
    if name == "uni_pc":
        return KSAMPLER(sample_uni_pc)
    if name == "uni_pc_bh2":
        return KSAMPLER(sample_uni_pc_bh2)
    if name == "ddim":
        return ksampler("euler", inpaint_options={"random": True})
    return ksampler(name)


def _as_ksampler(value: Any) -> Any:
    """A SAMPLER value as packs expect it (a KSAMPLER with ``sampler_function`` and
    ``extra_options``): latentgraph's own SAMPLER values are a name or a SamplerChoice."""
    if isinstance(value, Sampler):
        return value
    if isinstance(value, str):
        return sampler_object(value)
    if isinstance(value, SamplerChoice):
        function = value.sampler_function or _REGISTRY.get(value.sampler_name)
        if function is None:
            raise ValueError(f"unknown sampler {value.sampler_name!r}")
        return KSAMPLER(function, dict(value.extra_options), {"random": True} if value.sampler_name == "ddim" else {})
    return value


def calculate_sigmas(model_sampling: Any, scheduler_name: str, steps: int) -> torch.Tensor:
    """The named scheduler's sigmas for ``steps`` steps of a model's noise schedule."""
    fn = _SCHEDULERS.get(scheduler_name)
    if fn is None:
        raise ValueError(f"comfy.samplers.calculate_sigmas: invalid scheduler {scheduler_name!r}; expected one of "
                         f"{', '.join(SCHEDULER_NAMES)}")
    _check_schedule(model_sampling, "comfy.samplers.calculate_sigmas")
    return fn(model_sampling, steps)


class KSamplerX0Inpaint:
    """ComfyUI's inpainting denoiser around a guided one (``inner_model``, called as
    ``inner_model(x, sigma, model_options=..., seed=...)``): where ``denoise_mask`` is 0 the known
    latent (``latent_image``, re-noised to ``sigma`` with ``noise``) is put back before and after
    each call. The caller sets ``noise`` and ``latent_image``; the options'
    ``denoise_mask_function`` reshapes the mask per sigma. latentgraph's sampling does the same
    inside its own KSampler (latentgraph/sampling/ksampler.py)."""

    def __init__(self, model, sigmas: torch.Tensor):
        self.inner_model = model
        self.sigmas = sigmas

    def _known(self, sigma: torch.Tensor) -> torch.Tensor:
        base = getattr(self.inner_model, "inner_model", None)
        scale = getattr(base, "scale_latent_inpaint", None)
        if scale is not None:
            return scale(x=None, sigma=sigma, noise=self.noise, latent_image=self.latent_image)
        schedule = getattr(base, "model_sampling", None) or getattr(base, "schedule", None)
        if schedule is None:
            raise TypeError("comfy.samplers.KSamplerX0Inpaint: inner_model.inner_model must be a model with a noise "
                            f"schedule (model_sampling), got {type(base).__name__}")
        return schedule.noise_scaling(sigma.reshape(-1, 1, 1, 1), self.noise, self.latent_image, False)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, denoise_mask: torch.Tensor | None,
                 model_options: dict | None = None, seed: int | None = None) -> torch.Tensor:
        model_options = {} if model_options is None else model_options
        if denoise_mask is None:
            return self.inner_model(x, sigma, model_options=model_options, seed=seed)
        mask_fn = model_options.get("denoise_mask_function")
        if mask_fn is not None:
            denoise_mask = mask_fn(sigma, denoise_mask, extra_options={"model": self.inner_model, "sigmas": self.sigmas})
        keep = 1.0 - denoise_mask
        x = x * denoise_mask + self._known(sigma) * keep
        out = self.inner_model(x, sigma, model_options=model_options, seed=seed)
        return out * denoise_mask + self.latent_image * keep


def calc_cond_batch(model, conds: list, x_in: torch.Tensor, timestep: torch.Tensor, model_options: dict) -> list:
    """Each conditioning's denoised prediction at (x_in, timestep); ``conds`` as a CFGGuider
    holds them while sampling (lists of resolved entries, or None for zeros)."""
    for entries in conds:
        if entries is not None and not all(isinstance(c, _guidance.Cond) for c in entries):
            raise TypeError("comfy.samplers.calc_cond_batch: the conditionings must be the ones a CFGGuider holds "
                            "while sampling (guider.conds[...]); ComfyUI's processed dicts are not provided")
    return _guidance.calc_cond_batch(model.apply_model, conds, x_in, timestep, model_options, model)


def cfg_function(model, cond_pred: torch.Tensor, uncond_pred: torch.Tensor, cond_scale: float, x: torch.Tensor,
                 timestep: torch.Tensor, model_options: dict | None = None, cond=None, uncond=None) -> torch.Tensor:
    """Guidance from the two predictions (``sampler_cfg_function`` and each
    ``sampler_post_cfg_function`` of the options when set)."""
    return _guidance.cfg_function(model, cond_pred, uncond_pred, cond_scale, x, timestep, model_options or {},
                                  cond, uncond)


def sampling_function(model, x: torch.Tensor, timestep: torch.Tensor, uncond, cond, cond_scale: float,
                      model_options: dict | None = None, seed: int | None = None) -> torch.Tensor:
    """The guided denoised prediction: both conditionings (the negative left out at cfg 1),
    then the options' pre-CFG functions and guidance."""
    model_options = {} if model_options is None else model_options
    skip = math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False)
    uncond_ = None if skip else uncond
    conds = [cond, uncond_]
    batch_fn = model_options.get("sampler_calc_cond_batch_function")
    if batch_fn is None:
        out = calc_cond_batch(model, conds, x, timestep, model_options)
    else:
        out = batch_fn({"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    for fn in model_options.get("sampler_pre_cfg_function", ()):
        out = fn({"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                  "sigma": timestep, "model": model, "model_options": model_options})
    return cfg_function(model, out[0], out[1], cond_scale, x, timestep, model_options, cond, uncond_)


class CFGGuider(Guider):
    """ComfyUI's CFGGuider: a MODEL, named conditionings (``set_conds``/``inner_set_conds``)
    and a cfg scale; ``sample`` runs latentgraph's sampling with the denoiser
    ``predict_noise``, which subclasses override. It is latentgraph's GUIDER value, so
    SamplerCustomAdvanced runs it."""

    def __init__(self, model_patcher):
        _check_model(model_patcher, "comfy.samplers.CFGGuider")
        super().__init__(model_patcher)
        self.original_conds: dict[str, list] = {}

    def set_conds(self, positive: list, negative: list) -> None:
        self.inner_set_conds({"positive": positive, "negative": negative})

    def inner_set_conds(self, conds: dict[str, list]) -> None:
        """Keep each CONDITIONING as ComfyUI does, converted (comfy.sampler_helpers.convert_cond)."""
        from comfy.sampler_helpers import convert_cond

        for key, value in conds.items():
            self.original_conds[key] = convert_cond(value)
        self.conds = self._conditionings()

    def _conditionings(self) -> dict[str, list]:
        """``original_conds`` as CONDITIONING lists again, for latentgraph's sampling."""
        return {key: [_as_pair(key, c) for c in value] for key, value in self.original_conds.items()}

    def denoiser(self, conds: dict, options: dict) -> Callable:
        """The run's denoiser: ``predict_noise`` over the conditionings resolved for this latent
        (areas given to each other conditioning, controls and GLIGEN boxes to the negatives)."""
        conds = _opposite_areas(conds)
        positive = conds.get("positive", [])
        for key in conds:
            if key != "positive":
                conds[key] = _guidance.gligen_to_uncond(positive, _guidance.control_to_uncond(positive, conds[key]))
        self.inner_model, self.conds = self.model_patcher, conds
        seed = getattr(self, "_seed", None)

        def guided(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
            return self.predict_noise(x, sigma, options if model_options is None else model_options, seed)
        return guided

    def __call__(self, x, timestep, model_options=None, seed=None) -> torch.Tensor:
        return self.predict_noise(x, timestep, {} if model_options is None else model_options, seed)

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict | None = None,
                      seed: int | None = None) -> torch.Tensor:
        return sampling_function(self.inner_model, x, timestep, self.conds.get("negative"), self.conds.get("positive"),
                                 self.cfg, model_options=model_options, seed=seed)

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any, sigmas: torch.Tensor,
               denoise_mask: torch.Tensor | None = None, callback: Callable | None = None, disable_pbar: bool = False,
               seed: int | None = None) -> torch.Tensor:
        """Sample ``latent_image`` from ``noise`` down ``sigmas`` with ``sampler`` (a SAMPLER
        value); ``callback(step, x0, x, total_steps)``. Returns the samples on the CPU; a seed
        of None is 0 (the sampler's own noise is always seeded here)."""
        if sigmas.shape[-1] == 0:
            return latent_image
        if latent_image is None:
            raise ValueError("CFGGuider.sample: latent_image is None; give the latent to sample from "
                             "(torch.zeros_like(noise) for an empty one)")
        if isinstance(sampler, Sampler) and not isinstance(sampler, SamplerChoice):
            # a pack's Sampler subclass samples through ComfyUI's internals (its model_wrap)
            raise runtime.missing(__name__, "Sampler.sample")
        self.conds, self._seed = self._conditionings(), 0 if seed is None else seed
        try:
            return super().sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.conds = self._conditionings()
            self.__dict__.pop("inner_model", None)


def _as_pair(key: str, entry: Any) -> list:
    """A converted conditioning entry (a dict with ``cross_attn``) as ``[tensor, options]``."""
    if isinstance(entry, (list, tuple)):  # a pack put a plain CONDITIONING entry there
        return list(entry)
    if entry.get("model_conds"):
        raise ValueError(f"CFGGuider conditioning {key!r}: an entry carries model_conds "
                         f"({', '.join(entry['model_conds'])}), ComfyUI's model-specific inputs, which latentgraph "
                         f"computes itself; give the conditioning as CONDITIONING")
    options = {k: v for k, v in entry.items() if k not in ("cross_attn", "model_conds", "uuid")}
    return [entry.get("cross_attn"), options]


def sample(model, noise: torch.Tensor, positive: list, negative: list, cfg: float, device, sampler,
           sigmas: torch.Tensor, model_options: dict | None = None, latent_image: torch.Tensor | None = None,
           denoise_mask: torch.Tensor | None = None, callback: Callable | None = None, disable_pbar: bool = False,
           seed: int | None = None) -> torch.Tensor:
    """Sample with CFG between ``positive`` and ``negative``. As in ComfyUI the MODEL's own
    options are used (``model_options`` is not read) and ``device`` is the model's."""
    guider = CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider.sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)


class KSampler:
    """A sampler name, a scheduler and a step count over a MODEL: ``sigmas`` is the schedule
    latentgraph's KSampler node runs for them, and ``sample`` runs it."""

    SCHEDULERS = SCHEDULER_NAMES
    SAMPLERS = SAMPLER_NAMES
    DISCARD_PENULTIMATE_SIGMA_SAMPLERS = set(DISCARD_PENULTIMATE)

    def __init__(self, model, steps: int, device, sampler: str | None = None, scheduler: str | None = None,
                 denoise: float | None = None, model_options: dict | None = None):
        _check_model(model, "comfy.samplers.KSampler")
        for kind, value, names in (("sampler", sampler, self.SAMPLERS), ("scheduler", scheduler, self.SCHEDULERS)):
            if value is not None and value not in names:
                raise ValueError(f"comfy.samplers.KSampler: unknown {kind} {value!r}; expected one of "
                                 f"{', '.join(names)}")
        self.model, self.device = model, device
        self.sampler = self.SAMPLERS[0] if sampler is None else sampler
        self.scheduler = self.SCHEDULERS[0] if scheduler is None else scheduler
        self.model_options = model.model_options if model_options is None else model_options
        self.set_steps(steps, denoise)
        self.denoise = denoise

    def calculate_sigmas(self, steps: int) -> torch.Tensor:
        return scheduler_sigmas(self.model.schedule, self.scheduler, steps, self.sampler)

    def set_steps(self, steps: int, denoise: float | None = None) -> None:
        self.steps = steps
        sigmas = compute_sigmas(self.model.schedule, self.scheduler, steps, denoise, self.sampler)
        self.sigmas = sigmas if self.device is None else sigmas.to(self.device)

    def sample(self, noise: torch.Tensor, positive: list, negative: list, cfg: float,
               latent_image: torch.Tensor | None = None, start_step: int | None = None, last_step: int | None = None,
               force_full_denoise: bool = False, denoise_mask: torch.Tensor | None = None,
               sigmas: torch.Tensor | None = None, callback: Callable | None = None, disable_pbar: bool = False,
               seed: int | None = None) -> torch.Tensor:
        """Steps start_step..last_step of the schedule (or of ``sigmas``); the latent as it is
        when start_step is past the end."""
        sigmas = trim_sigmas(self.sigmas if sigmas is None else sigmas, start_step, last_step, force_full_denoise)
        if sigmas is None:
            return latent_image if latent_image is not None else torch.zeros_like(noise)
        return sample(self.model, noise, positive, negative, cfg, self.device, sampler_object(self.sampler), sigmas,
                      self.model_options, latent_image=latent_image, denoise_mask=denoise_mask, callback=callback,
                      disable_pbar=disable_pbar, seed=seed)
