"""Explicit multistep samplers on the probability-flow ODE in sigma: iPNDM, iPNDM with
variable steps, and DEIS (as collected in zju-pi's diff-sampler; Zhou et al. 2024, "Fast ODE-based
Sampling for Diffusion Models in Around 5 Steps").

Same calling convention as ``k_samplers``. Each keeps the derivatives d = (x - D) / sigma of up to
three previous steps and takes the final step to sigma 0 as a plain denoise (iPNDM) or Euler step.
"""

from __future__ import annotations

import numpy as np
import torch

from .steps import Run


def _push(history: list, d: torch.Tensor, max_order: int) -> list:
    """The newest max_order - 1 derivatives, oldest first."""
    return (history + [d])[-(max_order - 1):] if max_order > 1 else []


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, eq. 23): Adams-Bashforth steps with
    fixed-step weights, warming up from Euler."""
    run = Run(model, x, extra_args, callback)
    history = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.step(x, i, sigmas)
        d = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigma_next - sigma) * d
        elif order == 2:
            x_next = x + (sigma_next - sigma) * (3 * d - history[-1]) / 2
        elif order == 3:
            x_next = x + (sigma_next - sigma) * (23 * d - 16 * history[-1] + 5 * history[-2]) / 12
        else:
            x_next = x + (sigma_next - sigma) * (55 * d - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24
        history = _push(history, d, max_order)
        x = x_next
    return x


def ipndm_v_coefficients(sigmas, i: int, order: int) -> list:
    """Weights of d_i, d_{i-1}, ... in iPNDM's variable-step Adams-Bashforth update at step i."""
    h_n = sigmas[i + 1] - sigmas[i]
    h_n_1 = sigmas[i] - sigmas[i - 1]
    if order == 2:
        return [(2 + (h_n / h_n_1)) / 2, -(h_n / h_n_1) / 2]
    h_n_2 = sigmas[i - 1] - sigmas[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if order == 3:
        return [(2 + (h_n / h_n_1)) / 2 + temp1,
                -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1,
                temp1 * h_n_1 / h_n_2]
    h_n_3 = sigmas[i - 2] - sigmas[i - 3]
    temp2 = (((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2)))
             * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    return [(2 + (h_n / h_n_1)) / 2 + temp1 + temp2,
            -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2,
            temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2,
            -temp2 * ratio * h_n_1 / h_n_2]


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=4):
    """iPNDM with Adams-Bashforth weights recomputed for the actual (uneven) step sizes."""
    run = Run(model, x, extra_args, callback)
    history = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.step(x, i, sigmas)
        d = (x - denoised) / sigma
        order = min(max_order, i + 1)
        if sigma_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            c = ipndm_v_coefficients(sigmas, i, order)
            total = c[0] * d
            for k in range(1, order):
                total = total + c[k] * history[-k]
            x_next = x + (sigma_next - sigma) * total
        history = _push(history, d, max_order)
        x = x_next
    return x


def _vp_time(sigmas: torch.Tensor, epsilon_s=1e-3, sigma_min=0.002, sigma_max=80):
    """Map sigmas to the time t of a VP-SDE whose linear beta(t) = beta_0 + t (beta_1 - beta_0)
    reaches sigma_min at t = epsilon_s and sigma_max at t = 1 (EDM's VP parameters, Karras et al.
    2022 table 1). Returns (t (float32), beta_0, beta_1 (float64 scalars))."""
    # dtypes as in the reference implementation: sigma_min's log in float32, the integer
    # sigma_max's in float64, logs taken by numpy (torch's can differ by an ulp)
    log_min = torch.tensor(np.log((torch.tensor(sigma_min) ** 2 + 1).numpy()))
    log_max = torch.tensor(np.log((torch.tensor(sigma_max) ** 2 + 1).numpy()))
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_0 = log_max - 0.5 * beta_d
    s = sigmas.detach().cpu()
    t = ((beta_0 ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_0) / beta_d
    return t, beta_0, beta_d + beta_0


def deis_coefficients(sigmas: torch.Tensor, max_order: int, n: int = 10000) -> list:
    """DEIS's time-AB weights (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with
    Exponential Integrator", eq. 15): integrals of the exponential-integrator kernel against
    Lagrange polynomials through previous times, by an n-point Riemann sum in VP time."""
    t, beta_0, beta_1 = _vp_time(sigmas)
    coeffs = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(t[i], t[i + 1], n)
        dtau = (t[i + 1] - t[i]) / n
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        # d log(alpha) / dtau = -(beta_0 + tau (beta_1 - beta_0)), evaluated with the rounding that
        # differentiating log(alpha) by autograd gives (as the reference does), for identical weights
        g = (1 / alpha) * alpha
        d_log_alpha = (g * (beta_1 - beta_0).float() * -0.5) * 2 * taus - g * beta_0.float()
        kernel = -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))
        prev = t[[i - k for k in range(order)]]
        row = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly = poly * ((taus - prev[k]) / (prev[j] - prev[k]))
            row.append(torch.sum(kernel * poly) * dtau)
        coeffs.append(row)
    return coeffs


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, disable=None, max_order=3):
    """DEIS-tAB (Zhang & Chen 2023) with up to max_order previous derivatives; Euler to sigma 0."""
    run = Run(model, x, extra_args, callback)
    coeffs = deis_coefficients(sigmas, max_order)
    history = []
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.step(x, i, sigmas)
        d = (x - denoised) / sigma
        order = 1 if sigma_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (sigma_next - sigma) * d
        else:
            x_next = x + coeffs[i][0] * d
            for k in range(1, order):
                x_next = x_next + coeffs[i][k] * history[-k]
        history = _push(history, d, max_order)
        x = x_next
    return x
