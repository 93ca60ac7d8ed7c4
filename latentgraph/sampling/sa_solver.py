"""SA-Solver: stochastic Adams predictor-corrector in data prediction (Xue et al. 2023,
"SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models", arXiv:2309.05019).

Same calling convention as ``k_samplers``. The default stochasticity (tau = 1 for sigmas between
the model's 20% and 80% points, else 0) needs the model's noise schedule, which the KSampler
hands over as ``extra_args["model_sampling"]`` (anything with ``percent_to_sigma``; without
one, SD's default DiscreteSchedule), or a caller passes ``tau_func``. The numerics follow
ComfyUI's k-diffusion fork operation by operation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .dpm_solver import half_log_snr
from .schedule import DiscreteSchedule
from .steps import Run


def exponential_coeffs(s: torch.Tensor, t: torch.Tensor, order: int, tau: float) -> torch.Tensor:
    """(1 + tau^2) * integral from s to t of e^((1 + tau^2) x) x^p dx for p = 0..order-1, with
    e^((1 + tau^2) t) factored out, by the integration-by-parts recursion (shape (order,))."""
    tau_mul = 1 + tau ** 2
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    boundary = t ** p - s ** p * (-tau_mul * (t - s)).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    log_coeff = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)  # log(p! / q!)
    if tau > 0:
        log_coeff = log_coeff - depth * math.log(tau_mul)
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    return (log_coeff.exp() * signs).tril() @ boundary


def simple_b_coeffs(sigma_next: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor,
                    lambda_t: torch.Tensor, tau: float, corrector: bool) -> torch.Tensor:
    """The paper's simplified order-2 weights (Appendix D): a 2-step predictor or 1-step corrector."""
    tau_mul = 1 + tau ** 2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * lambda_t.exp()
    if corrector:
        b_1 = alpha_t * (0.5 * tau_mul * h)
        b_2 = alpha_t * (-h * tau_mul).expm1().neg() - b_1
    else:
        b_2 = alpha_t * (0.5 * tau_mul * h ** 2) / (lambdas[-2] - lambda_s)
        b_1 = alpha_t * (-h * tau_mul).expm1().neg() - b_2
    return torch.stack([b_2, b_1])


def adams_b_coeffs(sigma_next: torch.Tensor, lambdas: torch.Tensor, lambda_s: torch.Tensor,
                   lambda_t: torch.Tensor, tau: float, simple_order_2: bool = False,
                   corrector: bool = False) -> torch.Tensor:
    """The b_i weights of the stochastic Adams step from lambda_s to lambda_t over the
    predictions at ``lambdas`` (paper eqs. 15 and 18): integrals of their Lagrange basis."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return simple_b_coeffs(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector)
    integrals = torch.linalg.solve(torch.vander(lambdas, n, increasing=True).T,
                                   exponential_coeffs(lambda_s, lambda_t, n, tau))
    return sigma_next * lambda_t.exp() * integrals  # alpha_t times the integrals


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> Callable[[torch.Tensor], float]:
    """tau(sigma) = eta inside [end_sigma, start_sigma], else 0 (an ODE step)."""

    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        sigma = sigma.item() if isinstance(sigma, torch.Tensor) else sigma
        return eta if start_sigma >= sigma >= end_sigma else 0.0

    return tau


def _default_tau(extra_args: dict) -> Callable[[torch.Tensor], float]:
    """tau = 1 between the model's 20% and 80% sigmas (SD's default schedule when none is given)."""
    schedule = extra_args.get("model_sampling")
    schedule = DiscreteSchedule() if schedule is None else schedule
    return tau_interval(schedule.percent_to_sigma(0.2), schedule.percent_to_sigma(0.8))


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None, s_noise=1.0,
                     noise_sampler=None, predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    """SA-Solver: a stochastic Adams predictor of ``predictor_order`` and corrector of ``corrector_order``
    (PECE: the corrected state is evaluated again); orders drop near the end for stability."""
    if len(sigmas) <= 1:
        return x
    run = Run(model, x, extra_args, callback, noise_sampler)
    tau_func = _default_tau(run.extra_args) if tau_func is None else tau_func
    lambdas = half_log_snr(sigmas)
    keep = max(predictor_order, corrector_order)
    x_pred, h, tau, noise, preds = x, 0.0, 0.0, 0.0, []
    to_end = sigmas[-1].item() == 0  # lower the orders near the end for stability
    for i in range(len(sigmas) - 1):
        denoised = run.step(x_pred, i, sigmas)
        preds = (preds + [denoised])[-keep:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_end:
            p_order, c_order = min(p_order, len(sigmas) - 2 - i), min(c_order, len(sigmas) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:  # corrector: redo the last step with the prediction at its end included
            b = adams_b_coeffs(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i], tau,
                               simple_order_2, corrector=True)
            x = sigmas[i] / sigmas[i - 1] * (-(tau ** 2) * h).exp() * x + _combine(preds, c_order, b)
            if tau > 0 and s_noise > 0:
                x = x + noise  # the previous predictor step's noise
            if use_pece:
                denoised = run(x, sigmas[i])
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        tau = tau_func(sigmas[i + 1])
        b = adams_b_coeffs(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1], tau,
                           simple_order_2)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau ** 2) * h).exp() * x + _combine(preds, p_order, b)
        if tau > 0 and s_noise > 0:
            noise = (run.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1]
                     * (-2 * tau ** 2 * h).expm1().neg().sqrt() * s_noise)
            x_pred = x_pred + noise
    return x


def _combine(preds: list, order: int, b: torch.Tensor) -> torch.Tensor:
    """sum_k b_k * preds[-order + k]."""
    return torch.tensordot(torch.stack(preds[-order:], dim=1), b, dims=([1], [0]))


@torch.no_grad()
def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, disable=None, tau_func=None,
                          s_noise=1.0, noise_sampler=None, predictor_order=3, corrector_order=4, simple_order_2=False):
    """SA-Solver in PECE mode (predict, evaluate, correct, evaluate)."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, disable, tau_func, s_noise, noise_sampler,
                            predictor_order, corrector_order, use_pece=True, simple_order_2=simple_order_2)
