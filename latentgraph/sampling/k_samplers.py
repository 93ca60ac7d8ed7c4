"""Single-step samplers of the Karras ODE/SDE family: Euler, Heun, DPM-2, their ancestral
variants, LMS, DDPM and LCM.

Every sampler is ``(model, x, sigmas, extra_args=None, callback=None, disable=None, ...) -> x``
where ``model(x, sigma * s_in, **extra_args)`` is a denoiser returning x0, ``x`` starts at noise
level ``sigmas[0]`` and ``sigmas`` ends (usually) at 0. ``callback`` gets
``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step. Stochastic samplers draw from
``noise_sampler(sigma, sigma_next)``, by default seeded from ``extra_args["seed"]``.
``disable`` (a progress bar switch in k-diffusion) is accepted and ignored.
The numerics follow ComfyUI's k-diffusion fork operation by operation.
"""

from __future__ import annotations

import torch

from .steps import Run


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """v (...) -> v (..., 1, 1, ...) with ndim dims in all."""
    return v[(...,) + (None,) * (ndim - v.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """(sigma_down, sigma_up) of an ancestral step: go deterministically down to sigma_down,
    then add noise of std sigma_up to land at sigma_to (eta = 1 is DDPM's posterior variance)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, noise_sampler):
    """Karras et al. (2022) Algorithm 2, lines 4-6: raise the noise level from sigma_i to
    sigma_hat = sigma_i * (1 + gamma) with fresh noise. Returns (x, sigma_hat)."""
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + noise_sampler(sigmas[i], sigma_hat) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, noise_sampler=None):
    """Euler steps on the probability-flow ODE, Algorithm 2 of Karras et al. (2022) without the Heun correction."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, run.noise)
        d = to_d(x, sigma_hat, run.step(x, i, sigmas, sigma_hat))
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral sampling with Euler steps: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt + run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0, noise_sampler=None):
    """Heun's second-order method, Algorithm 2 of Karras et al. (2022); the last step to sigma 0 is an Euler step."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, run.noise)
        d = to_d(x, sigma_hat, run.step(x, i, sigmas, sigma_hat))
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], run(x_2, sigmas[i + 1]))
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                   s_tmax=float("inf"), s_noise=1.0, noise_sampler=None):
    """Heun++ (Carzit's sd-webui-samplers-scheduler): a third model call at sigma_{i+2} and
    derivatives weighted by sigma / (3 sigma_0); Heun near the end, Euler on the last step."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, run.noise)
        d = to_d(x, sigma_hat, run.step(x, i, sigmas, sigma_hat))
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], run(x_2, sigmas[i + 1]))
        if sigmas[i + 2] == s_end:
            w2 = sigmas[i + 1] / (2 * sigmas[0])
            d_prime = d * (1 - w2) + d_2 * w2
        else:
            x_3 = x_2 + d_2 * (sigmas[i + 2] - sigmas[i + 1])
            d_3 = to_d(x_3, sigmas[i + 2], run(x_3, sigmas[i + 2]))
            w2, w3 = sigmas[i + 1] / (3 * sigmas[0]), sigmas[i + 2] / (3 * sigmas[0])
            d_prime = (1 - w2 - w3) * d + w2 * d_2 + w3 * d_3
        x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0, noise_sampler=None):
    """DPM-Solver-2 midpoint steps (Lu et al. 2022) in the form of Karras et al. (2022) Algorithm 2:
    the derivative at the geometric midpoint sigma_mid carries the whole step."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = churn(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise, run.noise)
        d = to_d(x, sigma_hat, run.step(x, i, sigmas, sigma_hat))
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, run(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                           noise_sampler=None):
    """Ancestral sampling with DPM-Solver-2 steps down to sigma_down, then fresh noise up to sigma_next."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        d = to_d(x, sigmas[i], run.step(x, i, sigmas))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, run(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def lms_coefficient(order: int, t, i: int, j: int) -> float:
    """Integral over [t_i, t_{i+1}] of the Lagrange basis polynomial of t_{i-j} through
    t_i, ..., t_{i-order+1} (the weight of the j-th previous derivative)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")

    def basis(tau):
        prod = 1.0
        for k in range(order):
            if k != j:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    from scipy import integrate  # imported by the lms sampler alone (scipy costs 0.1-0.4 s)

    return integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma with exact Lagrange weights), k-diffusion's LMS."""
    run = Run(model, x, extra_args, callback)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        ds = (ds + [to_d(x, sigmas[i], denoised)])[-order:]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [lms_coefficient(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Ancestral DDPM steps (Ho et al. 2020, Algorithm 2) in variance-preserving space, between
    the alpha_bar = 1 / (sigma^2 + 1) of consecutive sigmas."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = run.step(x, i, sigmas)
        x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
        eps = (x - denoised) / sigma
        alpha_bar, alpha_bar_next = 1 / (sigma * sigma + 1), 1 / (sigma_next * sigma_next + 1)
        alpha = alpha_bar / alpha_bar_next
        x = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_bar).sqrt())
        if sigma_next > 0:
            posterior_std = ((1 - alpha) * (1.0 - alpha_bar_next) / (1.0 - alpha_bar)).sqrt()
            x = x + posterior_std * run.noise(sigma, sigma_next)
            x = x * torch.sqrt(1.0 + sigma_next ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    """Latent Consistency Model sampling (Luo et al. 2023): jump to the denoised latent, then
    re-noise it to the next sigma with fresh noise."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        x = run.step(x, i, sigmas)
        if sigmas[i + 1] > 0:
            x = run.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] + x
    return x
