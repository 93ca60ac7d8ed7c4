"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) and DPM-Solver++ (Lu et al. 2022,
arXiv:2211.01095) samplers, in k-diffusion's formulation with t = lambda = -log(sigma).

Same calling convention as ``k_samplers``. ``dpm_solver_fast``/``dpm_solver_adaptive`` take
(sigma_min, sigma_max, n) like k-diffusion; ``sample_dpm_fast``/``sample_dpm_adaptive`` take a
sigma list as ComfyUI's KSampler does (the last nonzero sigma is sigma_min). The SDE samplers
default to Brownian-tree noise seeded from ``extra_args["seed"]``.
"""

from __future__ import annotations

import math

import torch

from .k_samplers import ancestral_step, to_d
from .noise import brownian_noise_sampler, cpu_noise_sampler
from .steps import Run


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def half_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) of a variance-exploding (eps / v) schedule, where alpha = 1, which
    is DPM-Solver's t. (Every schedule latentgraph has is of that kind; flow models would need
    log((1 - s) / s).)"""
    return sigma.log().neg()


def dpm_solver_step(eps_at, x, t, t_next, order: int, r1: float | None = None):
    """One DPM-Solver-1/2/3 step from t to t_next (Lu et al. 2022, Algorithms 4 and 5);
    ``eps_at(key, x, t)`` is the noise prediction, memoised per step by key."""
    h = t_next - t
    eps = eps_at("eps", x, t)
    if order == 1:
        return x - _sigma(t_next) * h.expm1() * eps
    r1 = (1 / 2 if order == 2 else 1 / 3) if r1 is None else r1
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = eps_at("eps_r1", u1, s1)
    if order == 2:
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
    r2 = 2 / 3
    s2 = t + r2 * h
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = eps_at("eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _eps_function(model, x, extra_args, cache: dict):
    """eps_at(key, x, t) = (x - D(x; sigma(t))) / sigma(t), cached in ``cache`` by key."""
    s_in = x.new_ones([x.shape[0]])

    def eps_at(key, x, t):
        if key not in cache:
            cache[key] = (x - model(x, _sigma(t) * s_in, **extra_args)) / _sigma(t)
        return cache[key]

    return eps_at


@torch.no_grad()
def dpm_solver_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0.0,
                    s_noise=1.0, noise_sampler=None):
    """DPM-Solver-fast (Lu et al. 2022, sec. 3.4): n model calls spent on steps uniform in
    lambda, of order 3 except the last one or two."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = cpu_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler
    t_start, t_end = half_log_snr(torch.as_tensor(sigma_max)), half_log_snr(torch.as_tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = t_next, 0.0
        if eta:
            sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, half_log_snr(sd))
            su = (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5
        eps_at = _eps_function(model, x, extra_args, {})
        denoised = x - _sigma(t) * eps_at("eps", x, t)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": _sigma(t), "sigma_hat": _sigma(t), "denoised": denoised})
        x = dpm_solver_step(eps_at, x, t, t_next_, order)
        if eta:  # eta = 0 would add exactly nothing: no draw
            x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


@torch.no_grad()
def dpm_solver_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3,
                        rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81,
                        eta=0.0, s_noise=1.0, noise_sampler=None):
    """DPM-Solver-12/23 with adaptive steps (Lu et al. 2022, sec. 3.4 and Algorithm 6): the step
    size follows a PID controller on the embedded lower-order error estimate (Soderlind 2003)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = cpu_noise_sampler(x, extra_args.get("seed")) if noise_sampler is None else noise_sampler
    s, t_end = half_log_snr(torch.as_tensor(sigma_max)), half_log_snr(torch.as_tensor(sigma_min))
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    # PID controller on 1/error (k-diffusion's PIDStepSizeController)
    h, k = h_init, 1.5 if eta else order
    b1, b2, b3 = (pcoeff + icoeff + dcoeff) / k, -(pcoeff + 2 * dcoeff) / k, dcoeff / k
    inv_errs = []
    x_prev, step = x, 0
    while s < t_end - 1e-5:
        t = torch.minimum(t_end, s + h)
        t_, su = t, 0.0
        if eta:
            sd, _ = ancestral_step(_sigma(s), _sigma(t), eta)
            t_ = torch.minimum(t_end, half_log_snr(sd))
            su = (_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5
        eps_at = _eps_function(model, x, extra_args, {})
        denoised = x - _sigma(s) * eps_at("eps", x, s)
        if order == 2:
            x_low, x_high = dpm_solver_step(eps_at, x, s, t_, 1), dpm_solver_step(eps_at, x, s, t_, 2)
        else:
            x_low, x_high = dpm_solver_step(eps_at, x, s, t_, 2, r1=1 / 3), dpm_solver_step(eps_at, x, s, t_, 3)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        inv_err = 1 / (float(error) + 1e-8)
        inv_errs = [inv_err] + (inv_errs[1:] if inv_errs else [inv_err, inv_err])
        factor = 1 + math.atan(inv_errs[0] ** b1 * inv_errs[1] ** b2 * inv_errs[2] ** b3 - 1)
        if factor >= accept_safety:  # accept
            inv_errs = [inv_errs[0], inv_errs[0], inv_errs[1]]
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t)) if eta else x_high
            s = t
        h *= factor
        if callback is not None:
            callback({"x": x, "i": step, "sigma": _sigma(s), "sigma_hat": _sigma(s), "denoised": denoised,
                      "error": error, "h": h})
        step += 1
    return x


def _sigma_range(sigmas):
    """(sigma_min, sigma_max, steps) of a sigma list ending in 0 or not, as ComfyUI hands them to DPM-Solver."""
    sigma_min = sigmas[-2] if sigmas[-1] == 0 else sigmas[-1]
    return sigma_min, sigmas[0], len(sigmas) - 1


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
    """DPM-Solver-fast over the range of a sigma list, with len(sigmas) - 1 model calls."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max, n = _sigma_range(sigmas)
    return dpm_solver_fast(model, x, sigma_min, sigma_max, n, extra_args, callback, disable, **kwargs)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, disable=None, **kwargs):
    """Adaptive DPM-Solver-23 over the range of a sigma list (the step count is its own)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max, _ = _sigma_range(sigmas)
    return dpm_solver_adaptive(model, x, sigma_min, sigma_max, extra_args, callback, disable, **kwargs)


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                              noise_sampler=None):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022b, Algorithm 1) down to sigma_down."""
    run = Run(model, x, extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = run(x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sde_noise_sampler(x, sigmas, extra_args, noise_sampler):
    """The given noise sampler, else k-diffusion's SDE default: a Brownian tree over the run's sigmas."""
    if noise_sampler is not None:
        return noise_sampler
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return brownian_noise_sampler(x, sigma_min, sigma_max, (extra_args or {}).get("seed"))


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                     noise_sampler=None, r=1 / 2):
    """DPM-Solver++ stochastic, k-diffusion's SDE variant of DPM-Solver++(2S): two half-log-SNR
    stages, each an ancestral step with Brownian noise."""
    if len(sigmas) <= 1:
        return x
    run = Run(model, x, extra_args, callback, _sde_noise_sampler(x, sigmas, extra_args, noise_sampler))
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = _sigma(lambda_s_1)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        # stage 1: ancestral step to sigma_s_1
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = half_log_snr(sd) - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * run.noise(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = run(x_2, sigma_s_1)
        # stage 2: ancestral step to sigma_next with the blended prediction
        sd, su = ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = half_log_snr(sd) - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * run.noise(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2): second order from the previous step's prediction."""
    run = Run(model, x, extra_args, callback)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None, solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (Lu et al. 2022b, appendix; k-diffusion): the 2M update on the SDE
    with noise scale eta, 'midpoint' or 'heun' second-order correction."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    run = Run(model, x, extra_args, callback, _sde_noise_sampler(x, sigmas, extra_args, noise_sampler))
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                noise = run.noise(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                             noise_sampler=None, solver_type="heun"):
    """DPM-Solver++(2M) SDE with the 'heun' second-order correction by default."""
    return sample_dpmpp_2m_sde(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                               solver_type)


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0,
                        noise_sampler=None):
    """DPM-Solver++(3M) SDE (k-diffusion): third-order multistep on the SDE with noise scale eta."""
    if len(sigmas) <= 1:
        return x
    run = Run(model, x, extra_args, callback, _sde_noise_sampler(x, sigmas, extra_args, noise_sampler))
    denoised_1, denoised_2, h, h_1, h_2 = None, None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigmas[i + 1] * lambda_t.exp()
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
            if h_2 is not None:  # third order from the last two predictions
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:  # second order from the last prediction
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                noise = run.noise(sigmas[i], sigmas[i + 1])
                x = x + noise * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _device_tree(sampler):
    """ComfyUI's ``*_gpu`` form of an SDE sampler: the same steps, with the Brownian tree built on
    the latent's device instead of the CPU (k-diffusion's ``cpu=False``). Only the noise's origin
    differs, so on the CPU the result is the plain sampler's, bit for bit."""
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None, **options):
        if len(sigmas) <= 1:
            return x
        extra_args = {} if extra_args is None else extra_args
        if noise_sampler is None:
            sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
            noise_sampler = brownian_noise_sampler(x, sigma_min, sigma_max, extra_args.get("seed"), on_device=True)
        return sampler(model, x, sigmas, extra_args, callback, disable, noise_sampler=noise_sampler, **options)

    sample.__name__ = sampler.__name__ + "_gpu"
    sample.__doc__ = f"{sampler.__name__} with its Brownian tree on the latent's device."
    return sample


sample_dpmpp_sde_gpu = _device_tree(sample_dpmpp_sde)
sample_dpmpp_2m_sde_gpu = _device_tree(sample_dpmpp_2m_sde)
sample_dpmpp_2m_sde_heun_gpu = _device_tree(sample_dpmpp_2m_sde_heun)
sample_dpmpp_3m_sde_gpu = _device_tree(sample_dpmpp_3m_sde)
