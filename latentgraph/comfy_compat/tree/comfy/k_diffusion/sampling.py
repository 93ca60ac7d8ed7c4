"""ComfyUI's ``comfy.k_diffusion.sampling``: the sampler functions packs call or wrap, the
schedules and the noise helpers, with k-diffusion's names and signatures.

The samplers are latentgraph's own (latentgraph/sampling/), which already take k-diffusion's
``(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)`` with ``model`` a
denoiser ``model(x, sigma * s_in, **extra_args) -> x0``; a function here is the very function
latentgraph's KSampler runs, so a pack's wrapper around ``sample_euler`` gives what KSampler
gives. ``disable`` (k-diffusion's progress-bar switch) is accepted and has no effect.

Noise is drawn as latentgraph draws it: ``default_noise_sampler`` from a CPU generator seeded
once (ComfyUI's draws on the latent's device: the same numbers on the CPU, other ones on a GPU).
Replacing a function of this module (``sampling.default_noise_sampler = mine``) changes what
packs that call it get (and ``comfy.samplers.ksampler`` looks ``sample_<name>`` up here), not how
latentgraph's samplers draw their noise: they do not look their helpers up here (a warning says so).
"""

from __future__ import annotations

import logging
import math
import sys
import types

import torch
from tqdm.auto import tqdm, trange

from latentgraph.comfy_compat import runtime
from latentgraph.sampling import dpm_solver as _dpm
from latentgraph.sampling.k_samplers import ancestral_step as _ancestral_step
from latentgraph.sampling.k_samplers import append_dims, to_d  # noqa: F401
from latentgraph.sampling.noise import brownian_noise_sampler as _brownian
from latentgraph.sampling.noise import cpu_noise_sampler as _cpu_noise
from latentgraph.sampling.samplers import SAMPLERS as _SAMPLERS
from latentgraph.sampling.schedulers import exponential_sigmas as _exponential
from latentgraph.sampling.schedulers import karras_sigmas as _karras
from latentgraph.sampling.sigma_lists import laplace_sigmas as _laplace
from latentgraph.sampling.sigma_lists import polyexponential_sigmas as _polyexponential
from latentgraph.sampling.sigma_lists import vp_sigmas as _vp

# k-diffusion's sample_<name> for every sampler latentgraph registers, except those ComfyUI keeps
# elsewhere (ddim and uni_pc are built by comfy.samplers) and the two DPM-Solver ones, which
# k-diffusion gives a sigma range rather than a sigma list (below)
_ELSEWHERE = {"ddim", "uni_pc", "uni_pc_bh2", "dpm_fast", "dpm_adaptive"}
globals().update({f"sample_{name}": fn for name, fn in _SAMPLERS.items() if name not in _ELSEWHERE})
# what ``from comfy.k_diffusion.sampling import *`` gives (packs also reach math, torch and
# trange through this module, as through ComfyUI's)
__all__ = ["BrownianTreeNoiseSampler", "append_dims", "append_zero", "default_noise_sampler", "get_ancestral_step",
           "get_sigmas_exponential", "get_sigmas_karras", "get_sigmas_laplace", "get_sigmas_polyexponential",
           "get_sigmas_vp", "math", "sample_dpm_adaptive", "sample_dpm_fast", "to_d", "torch", "tqdm", "trange"]
__all__ += sorted(f"sample_{name}" for name in _SAMPLERS if name not in _ELSEWHERE)


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class _ReplacementNotice(types.ModuleType):
    """A tree module that says so when a pack replaces one of its functions: the calls made
    through the layer see the replacement, latentgraph's own nodes do not (they never look
    their functions up in ComfyUI's modules)."""

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_") and name in self.__dict__ and self.__dict__[name] is not value:
            logging.getLogger("latentgraph.comfy_compat").warning(
                "a pack replaced %s.%s: calls through ComfyUI's modules use the replacement; latentgraph's own "
                "sampler nodes (KSampler, SamplerCustom, ...) keep theirs", self.__name__, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _ReplacementNotice


def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast from sigma_max to sigma_min in n model calls (k-diffusion's signature)."""
    return _dpm.dpm_solver_fast(model, x, sigma_min, sigma_max, n, extra_args, callback, disable, eta, s_noise,
                                noise_sampler)


def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None, return_info=False):
    """Adaptive DPM-Solver-12/23 from sigma_max to sigma_min (k-diffusion's signature)."""
    if return_info:
        raise ValueError("comfy.k_diffusion.sampling.sample_dpm_adaptive: return_info=True (the solver's step "
                         "statistics) is not provided by latentgraph; call it with return_info=False")
    return _dpm.dpm_solver_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, disable, order=order,
                                    rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff,
                                    accept_safety=accept_safety, eta=eta, s_noise=s_noise,
                                    noise_sampler=noise_sampler)


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu") -> torch.Tensor:
    """Karras et al. (2022)'s schedule, n sigmas and a final 0."""
    return _karras(n, sigma_min, sigma_max, rho).to(device)


def get_sigmas_exponential(n, sigma_min, sigma_max, device="cpu") -> torch.Tensor:
    return _exponential(n, sigma_min, sigma_max).to(device)


def get_sigmas_polyexponential(n, sigma_min, sigma_max, rho=1.0, device="cpu") -> torch.Tensor:
    return _polyexponential(n, sigma_min, sigma_max, rho).to(device)


def get_sigmas_vp(n, beta_d=19.9, beta_min=0.1, eps_s=1e-3, device="cpu") -> torch.Tensor:
    return _vp(n, beta_d, beta_min, eps_s).to(device)


def get_sigmas_laplace(n, sigma_min, sigma_max, mu=0.0, beta=0.5, device="cpu") -> torch.Tensor:
    return _laplace(n, sigma_min, sigma_max, mu, beta).to(device)


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """(sigma_down, sigma_up) of an ancestral step from sigma_from to sigma_to."""
    return _ancestral_step(sigma_from, sigma_to, eta)


def default_noise_sampler(x: torch.Tensor, seed: int | None = None):
    """``noise_sampler(sigma, sigma_next)``: fresh standard normal noise shaped like x at each
    call, from one generator seeded with ``seed`` (a random seed when None)."""
    return _cpu_noise(x, seed)


class BrownianTreeNoiseSampler:
    """Noise from a Brownian tree over [sigma_min, sigma_max] (torchsde): the call for
    (sigma, sigma_next) is the normalised increment between them, consistent whatever the
    steps. ``seed`` an int, or a list of one seed per batch item (a tree each); ``transform``
    maps sigma to the tree's time; ``cpu`` keeps the tree on the CPU."""

    def __init__(self, x, sigma_min, sigma_max, seed=None, transform=lambda x: x, cpu=False):
        self.transform = transform
        t0, t1 = transform(torch.as_tensor(sigma_min)), transform(torch.as_tensor(sigma_max))
        if isinstance(seed, (list, tuple)):
            if len(seed) != x.shape[0]:
                raise ValueError(f"BrownianTreeNoiseSampler: {len(seed)} seeds for a batch of {x.shape[0]}; "
                                 f"a list of seeds needs one per batch item")
            self.trees = [_brownian(x[:1], t0, t1, s, on_device=not cpu) for s in seed]
        else:
            self.trees = [_brownian(x, t0, t1, seed, on_device=not cpu)]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = self.transform(torch.as_tensor(sigma)), self.transform(torch.as_tensor(sigma_next))
        if len(self.trees) == 1:
            return self.trees[0](t0, t1)
        return torch.cat([tree(t0, t1) for tree in self.trees])
