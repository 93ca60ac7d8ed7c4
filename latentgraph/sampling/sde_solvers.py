"""Stochastic exponential solvers in data prediction: ER-SDE-Solver-3 (Cui et al. 2023,
"Elucidating the solution space of extended reverse-time SDE for diffusion models",
arXiv:2309.06169) and SEEDS-2/3 (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast
High-Quality Sampling from Diffusion Models", arXiv:2305.14267).

Same calling convention as ``k_samplers``; noise from ``extra_args["seed"]``'s CPU generator, one
draw per (sub)step in ComfyUI's order. The schedules here are variance exploding (alpha = 1);
alpha is still computed from lambda = log(alpha / sigma) as ComfyUI does, so rounding matches.
"""

from __future__ import annotations

import torch

from .dpm_solver import half_log_snr
from .steps import Run

ER_SDE_INTEGRATION_POINTS = 200  # the quadrature ComfyUI uses for the stage 2/3 integrals


def er_sde_noise_scaler(x: torch.Tensor) -> torch.Tensor:
    """ComfyUI's default ER-SDE noise scale function: x (e^(x^0.3) + 10)."""
    return x * ((x ** 0.3).exp() + 10.0)


def _er_sde_step(x, denoised, history, lambdas, sigmas, i, stage, scaler, points):
    """One deterministic ER-SDE step of order ``stage`` from sigmas[i] to sigmas[i + 1].
    ``history`` holds the last denoised and its first difference quotient (updated here)."""
    lam_s, lam_t = lambdas[i], lambdas[i + 1]
    alpha_t = sigmas[i + 1] / lam_t
    r_alpha = alpha_t / (sigmas[i] / lam_s)
    r = scaler(lam_t) / scaler(lam_s)
    x = r_alpha * r * x + alpha_t * (1 - r) * denoised
    if stage >= 2:
        dt = lam_t - lam_s
        step = -dt / ER_SDE_INTEGRATION_POINTS
        pos = lam_t + points * step
        scaled = scaler(pos)
        integral = torch.sum(1 / scaled) * step
        denoised_d = (denoised - history["denoised"]) / (lam_s - lambdas[i - 1])
        x = x + alpha_t * (dt + integral * scaler(lam_t)) * denoised_d
        if stage >= 3:
            integral_u = torch.sum((pos - lam_s) / scaled) * step
            denoised_u = (denoised_d - history["denoised_d"]) / ((lam_s - lambdas[i - 2]) / 2)
            x = x + alpha_t * ((dt ** 2) / 2 + integral_u * scaler(lam_t)) * denoised_u
        history["denoised_d"] = denoised_d
    return x, r, alpha_t


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, s_noise=1.0, noise_sampler=None,
                  noise_scaler=None, max_stage=3):
    """ER-SDE-Solver up to order ``max_stage`` (3: VP ER-SDE-Solver-3), noise scaled by ``noise_scaler``."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    scaler = er_sde_noise_scaler if noise_scaler is None else noise_scaler
    points = torch.arange(0, float(ER_SDE_INTEGRATION_POINTS), dtype=torch.float32, device=x.device)
    lambdas = half_log_snr(sigmas).neg().exp()  # ER-SDE's lambda = sigma / alpha
    history = {}
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            stage = min(max_stage, i + 1)
            x, r, alpha_t = _er_sde_step(x, denoised, history, lambdas, sigmas, i, stage, scaler, points)
            if s_noise > 0:
                scale = (lambdas[i + 1] ** 2 - lambdas[i] ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * run.noise(sigmas[i], sigmas[i + 1]) * s_noise * scale
        history["denoised"] = denoised
    return x


def _ei_h_phi_1(h: torch.Tensor) -> torch.Tensor:
    """h * phi_1(h) of exponential integrators."""
    return torch.expm1(h)


def _ei_h_phi_2(h: torch.Tensor) -> torch.Tensor:
    """h * phi_2(h) of exponential integrators."""
    return (torch.expm1(h) - h) / h


def _seeds_noise(noise, factor, sampler, sigma_from, sigma_to):
    """Carry the sub-step noise into the next segment (decayed by e^factor) plus fresh noise
    of the missing variance 1 - e^(2 factor): SEEDS's exact noise composition."""
    return noise * factor.exp() + factor.mul(2).expm1().neg().sqrt() * sampler(sigma_from, sigma_to)


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r=0.5):
    """SEEDS-2: two stages per step, the second at lambda fraction r; data prediction, VP."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1 = torch.lerp(lam_s, lam_t, r)
        sigma_1 = lam_1.neg().exp()
        alpha_1, alpha_t = sigma_1 * lam_1.exp(), sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_1 * _ei_h_phi_1(-r * h_eta) * denoised
        if inject:
            noise = (-2 * r * h * eta).expm1().neg().sqrt() * run.noise(sigmas[i], sigma_1)
            x_2 = x_2 + noise * sigma_1 * s_noise
        denoised_2 = run(x_2, sigma_1)
        denoised_d = torch.lerp(denoised, denoised_2, 1 / (2 * r))
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * _ei_h_phi_1(-h_eta) * denoised_d
        if inject:
            noise = _seeds_noise(noise, (r - 1) * h * eta, run.noise, sigma_1, sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                   noise_sampler=None, r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3: three stages per step at lambda fractions r_1 and r_2; data prediction, VP."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    inject = eta > 0 and s_noise > 0
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lam_t - lam_s
        h_eta = h * (eta + 1)
        lam_1, lam_2 = torch.lerp(lam_s, lam_t, r_1), torch.lerp(lam_s, lam_t, r_2)
        sigma_1, sigma_2 = lam_1.neg().exp(), lam_2.neg().exp()
        alpha_1, alpha_2 = sigma_1 * lam_1.exp(), sigma_2 * lam_2.exp()
        alpha_t = sigmas[i + 1] * lam_t.exp()
        x_2 = sigma_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_1 * _ei_h_phi_1(-r_1 * h_eta) * denoised
        if inject:
            noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * run.noise(sigmas[i], sigma_1)
            x_2 = x_2 + noise * sigma_1 * s_noise
        denoised_2 = run(x_2, sigma_1)
        a3_2 = r_2 / r_1 * _ei_h_phi_2(-r_2 * h_eta)
        a3_1 = _ei_h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject:
            noise = _seeds_noise(noise, (r_1 - r_2) * h * eta, run.noise, sigma_1, sigma_2)
            x_3 = x_3 + noise * sigma_2 * s_noise
        denoised_3 = run(x_3, sigma_2)
        b3 = _ei_h_phi_2(-h_eta) / r_2
        b1 = _ei_h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject:
            noise = _seeds_noise(noise, (r_2 - 1) * h * eta, run.noise, sigma_2, sigmas[i + 1])
            x = x + noise * sigmas[i + 1] * s_noise
    return x
