"""The sampler registry: ComfyUI's KSampler sampler names -> pure sampling functions.

Every entry is ``fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``
with ``model(x, sigma * s_in, **extra_args) -> denoised``; ``extra_args`` is handed to the model
on every call and ``extra_args["seed"]`` seeds the sampler's own noise (ancestral, SDE, ddpm,
lcm). As in ComfyUI, ``extra_args["model_options"]`` are the options the denoiser uses (the
cfg_pp samplers pass theirs, with a post-CFG function, on each call) and
``extra_args["model_sampling"]`` is the model's noise schedule (sa_solver reads its 20%/80%
sigmas). Names in the registry may be added, never changed or removed.
"""

from __future__ import annotations

import torch

from .cfg_pp import (sample_dpmpp_2m_cfg_pp, sample_dpmpp_2s_ancestral_cfg_pp, sample_euler_ancestral_cfg_pp,
                     sample_euler_cfg_pp)
from .dpm_solver import (sample_dpm_adaptive, sample_dpm_fast, sample_dpmpp_2m, sample_dpmpp_2m_sde,
                         sample_dpmpp_2m_sde_gpu, sample_dpmpp_2m_sde_heun, sample_dpmpp_2m_sde_heun_gpu,
                         sample_dpmpp_2s_ancestral, sample_dpmpp_3m_sde, sample_dpmpp_3m_sde_gpu, sample_dpmpp_sde,
                         sample_dpmpp_sde_gpu)
from .k_samplers import (sample_ddpm, sample_dpm_2, sample_dpm_2_ancestral, sample_euler, sample_euler_ancestral,
                         sample_heun, sample_heunpp2, sample_lcm, sample_lms)
from .multistep import sample_deis, sample_ipndm, sample_ipndm_v
from .res_multistep import (sample_gradient_estimation, sample_gradient_estimation_cfg_pp, sample_res_multistep,
                            sample_res_multistep_ancestral, sample_res_multistep_ancestral_cfg_pp,
                            sample_res_multistep_cfg_pp)
from .sa_solver import sample_sa_solver, sample_sa_solver_pece
from .sde_solvers import sample_er_sde, sample_seeds_2, sample_seeds_3
from .uni_pc import sample_uni_pc, sample_uni_pc_bh2

SAMPLERS = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,  # CFG++: steps along the uncond prediction (cfg_pp.py)
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,  # takes sigma_min/sigma_max/n from the sigma list
    "dpm_adaptive": sample_dpm_adaptive,  # ditto; chooses its own steps
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    # ComfyUI's *_gpu SDE samplers build their Brownian tree on the latent's device (k-diffusion's
    # cpu=False): on the CPU that is the plain samplers' tree; on a GPU the noise is the device's
    "dpmpp_sde_gpu": sample_dpmpp_sde_gpu,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun_gpu,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde_gpu,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,  # stochastic between the model's 20% and 80% sigmas
    "sa_solver_pece": sample_sa_solver_pece,
    # ComfyUI's "ddim" is Euler (the same ODE step on the sigma grid); only its inpainting
    # differs: the known region is re-noised with fresh noise from seed + 1 (the caller's job)
    "ddim": sample_euler,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
SAMPLER_NAMES = list(SAMPLERS)
# samplers that draw noise during sampling (results depend on the seed beyond the initial noise)
STOCHASTIC = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                        "dpmpp_3m_sde", "ddpm", "lcm", "dpmpp_sde_gpu", "dpmpp_2m_sde_gpu", "dpmpp_3m_sde_gpu",
                        "euler_ancestral_cfg_pp", "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_sde_heun",
                        "dpmpp_2m_sde_heun_gpu", "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp",
                        "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece"})


def get_sampler(name: str):
    """The sampling function registered under ``name``."""
    fn = SAMPLERS.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}: expected one of {', '.join(SAMPLER_NAMES)}")
    return fn


def sample(name: str, model, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
           callback=None, **options) -> torch.Tensor:
    """Run the named sampler from x (already noised to sigmas[0]) down the sigma schedule."""
    fn = get_sampler(name)
    return fn(model, x, sigmas, extra_args=extra_args, callback=callback, **options)
