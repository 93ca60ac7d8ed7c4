"""RES multistep (Zhang et al. 2023, "Improved order analysis and design of exponential
integrator for diffusion models sampling", arXiv:2308.02157) and gradient estimation (Permenter
& Yuan 2024, "Interpreting and Improving Diffusion Models from an Optimization Perspective"),
each plain, ancestral (eta) and CFG++ (see ``cfg_pp``).

Same calling convention as ``k_samplers``; the numerics follow ComfyUI's k-diffusion fork
operation by operation, including its noise draws (one per step to a nonzero sigma, also when
eta = 0 makes the noise's scale 0, so the generator advances as ComfyUI's does).
"""

from __future__ import annotations

import torch

from .cfg_pp import UncondCapture
from .dpm_solver import half_log_snr
from .k_samplers import ancestral_step, to_d
from .steps import Run


def _phi1(t: torch.Tensor) -> torch.Tensor:
    return torch.expm1(t) / t


def _phi2(t: torch.Tensor) -> torch.Tensor:
    return (_phi1(t) - 1.0) / t


def res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None,
                  eta=1.0, cfg_pp=False):
    """RES second-order multistep in log-sigma, ancestral when eta > 0; Euler on the first and last steps."""
    uncond = UncondCapture(extra_args) if cfg_pp else None
    run = Run(model, x, uncond.extra_args if cfg_pp else extra_args, callback, noise_sampler)
    old_sigma_down = old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0 or old_denoised is None:  # Euler
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond()) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            t_old, t_prev = half_log_snr(old_sigma_down), half_log_snr(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1, phi2 = _phi1(-h), _phi2(-h)
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            current = denoised
            if cfg_pp:
                x = x + (denoised - uncond())
                current = uncond()
            x = (-h).exp() * x + h * (b1 * current + b2 * old_denoised)
        if sigmas[i + 1] > 0:
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond() if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


@torch.no_grad()
def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                         noise_sampler=None):
    """RES multistep, deterministic (eta = 0)."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=0.0)


@torch.no_grad()
def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0,
                                noise_sampler=None):
    """RES multistep with CFG++, deterministic (eta = 0)."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=0.0,
                         cfg_pp=True)


@torch.no_grad()
def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                   s_noise=1.0, noise_sampler=None):
    """RES multistep with ancestral noise (eta = 1 by default)."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=eta)


@torch.no_grad()
def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                          s_noise=1.0, noise_sampler=None):
    """RES multistep with ancestral noise and CFG++."""
    return res_multistep(model, x, sigmas, extra_args, callback, disable, s_noise, noise_sampler, eta=eta,
                         cfg_pp=True)


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, disable=None, ge_gamma=2.0,
                               cfg_pp=False):
    """Euler steps plus (ge_gamma - 1) times the change of the derivative since the last step."""
    uncond = UncondCapture(extra_args) if cfg_pp else None
    run = Run(model, x, uncond.extra_args if cfg_pp else extra_args, callback)
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        d = to_d(x, sigmas[i], uncond() if cfg_pp else denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                      ge_gamma=2.0):
    """Gradient estimation with CFG++."""
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, disable, ge_gamma, cfg_pp=True)
