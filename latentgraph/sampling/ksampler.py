"""One sampling run, as ComfyUI's KSampler does it: scale the latent in, noise it to the first
sigma, run a sampler on the guided denoiser (re-imposing the known latent outside an
inpainting mask at every step), scale the result out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.patcher import call_wrapped
from .guidance import ApplyModel, CFGDenoiser, Cond, add_opposite_areas
from .samplers import sample as run_named_sampler
from .schedule import LatentFormat, as_latent_format

# callback(step, total, denoised, x) after each sampler step
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class SamplerChoice:
    """A SAMPLER value with options (the Sampler* nodes): a registered sampler's name and the
    keyword options its function takes (eta, s_noise, order, ...). KSamplerSelect's plain name
    is the same with no options. ``extra_options`` is ComfyUI's KSAMPLER attribute name.
    ``sampler_function``, when set, is run in place of the registered one (a sampler that only a
    node offers, e.g. SamplerEulerCFGpp's "alternative"); ``sampler_name`` then only names it."""

    sampler_name: str
    extra_options: dict = field(default_factory=dict)
    sampler_function: Callable | None = None


def sampler_parts(sampler: "str | SamplerChoice") -> tuple[str, dict]:
    """(name, options) of a SAMPLER value: a name or a SamplerChoice."""
    if isinstance(sampler, SamplerChoice):
        return sampler.sampler_name, dict(sampler.extra_options)
    return sampler, {}


def trim_sigmas(sigmas: torch.Tensor, start_step: int | None = None, last_step: int | None = None,
                force_full_denoise: bool = False) -> torch.Tensor | None:
    """KSamplerAdvanced's window on a schedule; None when start_step is past its end
    (nothing to sample: the latent comes back as it is)."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas


def prepare_denoise_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A noise mask (B, H, W) at any size -> (B, C, h, w) at latent size (bilinear), as ComfyUI."""
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = torch.nn.functional.interpolate(m, size=tuple(shape[2:]), mode="bilinear")
    m = m.repeat(1, shape[1], 1, 1)
    if m.shape[0] < shape[0]:
        m = m.repeat(math.ceil(shape[0] / m.shape[0]), 1, 1, 1)
    return m[: shape[0]]


def sample(apply_model: ApplyModel, schedule, sampler_name: "str | SamplerChoice", sigmas: torch.Tensor,
           noise: torch.Tensor, latent: torch.Tensor, positive: list[Cond], negative: list[Cond], cfg: float, seed: int,
           latent_scale: "float | LatentFormat", denoise_mask: torch.Tensor | None = None,
           callback: StepCallback | None = None, model_options: dict | None = None, model=None,
           guide: Callable[[dict], Callable] | None = None) -> torch.Tensor:
    """Sample and return the LATENT samples (unscaled VAE space, float32).

    noise and latent are (B, C, h, w) on the compute device; ``denoise_mask`` is 1 where the
    latent is to be regenerated (a SetLatentNoiseMask / VAEEncodeForInpaint mask).
    ``model_options`` are the MODEL's (ComfyUI's shape; not changed here) and ``model`` what
    its functions receive as the model. ``guide(options)``, when given, makes the guided
    denoiser in place of CFG over positive/negative (a GUIDER's: DualCFG, PerpNeg, ...).
    ``latent_scale``: the family's scale, or a LatentFormat (Playground v2.5's mean and std)."""
    sampler_function = sampler_name.sampler_function if isinstance(sampler_name, SamplerChoice) else None
    sampler_name, sampler_options = sampler_parts(sampler_name)
    if sigmas.numel() == 0:
        return latent
    sigmas = sigmas.to(noise.device)
    fmt = as_latent_format(latent_scale)
    latent_in = fmt.process_in(latent) if torch.count_nonzero(latent) > 0 else latent  # an empty latent stays 0
    positive, negative = add_opposite_areas(positive, negative)
    options = dict(model_options or {})
    # the run's whole schedule, for patches that act on a part of it (ComfyUI's sample_sigmas)
    options["transformer_options"] = {**options.get("transformer_options", {}), "sample_sigmas": sigmas}
    info = {"sigmas": sigmas, "model_sampling": schedule, "seed": seed, "noise_shape": tuple(noise.shape)}

    def run_sampling(options: dict, info: dict) -> torch.Tensor:
        return _sample_run(apply_model, schedule, sampler_name, sampler_function, sampler_options, sigmas, noise,
                           latent_in, positive, negative, cfg, seed, fmt, denoise_mask, callback, options, model,
                           guide)
    # "outer_sample" wrappers (EasyCache's per-run state) see and may replace the run's options
    return call_wrapped(options["transformer_options"], "outer_sample", run_sampling, options, info)


def _sample_run(apply_model, schedule, sampler_name, sampler_function, sampler_options, sigmas, noise, latent_in,
                positive, negative, cfg, seed, fmt, denoise_mask, callback, options, model, guide) -> torch.Tensor:
    """The run itself, once the options are final: guided denoiser, noising, sampler, scaling out."""
    if guide is None:
        guided = CFGDenoiser(apply_model, positive, negative, cfg, options, model)
    else:
        guided = guide(options)
    mask_fn = options.get("denoise_mask_function")
    mask = prepare_denoise_mask(denoise_mask, noise.shape).to(noise) if denoise_mask is not None else None
    # ComfyUI's ddim re-imposes the known region with fresh noise from seed + 1 when inpainting
    inpaint_noise = noise
    if mask is not None and sampler_name == "ddim":
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        inpaint_noise = torch.randn(noise.shape, generator=g, device="cpu").to(noise)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
        # a sampler's own options for this call (the cfg_pp samplers' copy), as ComfyUI's extra_args
        own = model_options is not None and model_options is not options
        plain = (lambda *a: guided(*a, model_options=model_options)) if own else guided
        # "predict_noise" wrappers (LazyCache) get ComfyUI's (x, sigma, model_options, seed)
        to = options["transformer_options"]
        guide_call = lambda x, s: call_wrapped(to, "predict_noise", lambda x, s, *_: plain(x, s), x, s, options, seed)
        if mask is None:
            return guide_call(x, sigma)
        step_mask = mask
        if mask_fn is not None:  # e.g. DifferentialDiffusion: the mask as a function of sigma
            step_mask = mask_fn(sigma, mask, extra_options={"model": model, "sigmas": sigmas})
        keep = 1.0 - step_mask
        known = schedule.noise_scaling(sigma.reshape(-1, 1, 1, 1), inpaint_noise, latent_in, False)
        x = x * step_mask + known * keep
        return guide_call(x, sigma) * step_mask + latent_in * keep

    max_sigma = float(schedule.sigma_max)
    first = float(sigmas[0])
    max_denoise = math.isclose(max_sigma, first, rel_tol=1e-5) or first > max_sigma
    x = schedule.noise_scaling(sigmas[0], noise, latent_in, max_denoise)
    total = len(sigmas) - 1
    step_cb = None
    if callback is not None:
        def step_cb(info: dict) -> None:
            callback(info["i"], total, info["denoised"], info["x"])
    # ComfyUI's extra_args: the seed of the sampler's own noise, the options (which a sampler may
    # extend for its own calls) and the model's noise schedule (sa_solver reads its sigmas)
    extra_args = {"seed": seed, "model_options": options, "model_sampling": schedule}
    run = run_named_sampler if sampler_function is None else (lambda _, *a, **k: sampler_function(*a, **k))
    # every argument of k-diffusion's calling convention, ``disable`` (its progress-bar switch) too:
    # a SAMPLER's own function may declare it without a default
    out = run(sampler_name, denoiser, x, sigmas, extra_args=extra_args, callback=step_cb, disable=None,
              **sampler_options)
    out = schedule.inverse_noise_scaling(sigmas[-1], out)
    return fmt.process_out(out.float())
