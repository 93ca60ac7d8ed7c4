"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
of Diffusion Models", arXiv:2302.04867): multistep data-prediction solver with the UniC corrector,
B(h) = h (bh1) or e^h - 1 (bh2).

As in ComfyUI, the solver runs in variance-preserving space x_vp = x / sqrt(1 + sigma^2), with
alpha = 1 / sqrt(1 + sigma^2), sigma_vp = sigma * alpha and lambda = log(alpha / sigma_vp) =
-log(sigma); a final sigma of 0 is replaced by 0.001 (lambda must stay finite) and the result is
scaled back from there. Order min(3, steps - 1), lowered at the first and last steps; one model
call per step (the corrector's call is reused by the next predictor), none at the last step.
"""

from __future__ import annotations

import torch

# ComfyUI stops the solver here instead of at sigma 0
FINAL_SIGMA = 0.001


def _log_alpha(sigma: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: torch.Tensor) -> torch.Tensor:
    return torch.exp(_log_alpha(sigma))


def _sigma_vp(sigma: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


def _bcast(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v[(...,) + (None,) * (ndim - 1)]


def _data_prediction(model, x_vp, sigma, extra_args):
    """x0 from the VP-space sample at sigma (B,): the denoiser's answer, routed through eps as
    ComfyUI's noise-prediction wrapper does (for the same rounding)."""
    s = _bcast(sigma, x_vp.ndim)
    x = x_vp * ((s ** 2 + 1.0) ** 0.5)
    eps = (x - model(x, sigma, **extra_args)) / s
    return (x_vp - _bcast(_sigma_vp(sigma), x_vp.ndim) * eps) / _bcast(_alpha(sigma), x_vp.ndim)


def unipc_bh_update(model_fn, x, model_prev, t_prev, t, order, variant, use_corrector):
    """One UniP-p step from t_prev[-1] to t with the last ``order`` data predictions, then (if
    use_corrector) the UniC-p correction using the prediction at the new point. Implements
    Algorithms 1-2 of Zhao et al. with B(h) by ``variant``. Returns (x_t, model_t or None)."""
    ndim = x.ndim
    lambda_prev_0, lambda_t = _lambda(t_prev[-1]), _lambda(t)
    m0 = model_prev[-1]
    sigma_prev_0, sigma_t, alpha_t = _sigma_vp(t_prev[-1]), _sigma_vp(t), torch.exp(_log_alpha(t))
    h = lambda_t - lambda_prev_0
    rks, D1s = [], []
    for i in range(1, order):
        rk = ((_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h)[0]
        rks.append(rk)
        D1s.append((model_prev[-(i + 1)] - m0) / rk)
    rks = torch.tensor(rks + [1.0], device=x.device)
    hh = -h[0]  # data prediction: the exponent runs in -lambda
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    B_h = hh if variant == "bh1" else torch.expm1(hh)
    R, b, factorial = [], [], 1
    for i in range(1, order + 1):
        R.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial / B_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = torch.stack(R), torch.tensor(b, device=x.device)
    D1s = torch.stack(D1s, dim=1) if D1s else None  # (B, order - 1, C, H, W)
    x_t_ = _bcast(sigma_t / sigma_prev_0, ndim) * x - _bcast(alpha_t * h_phi_1, ndim) * m0
    pred_res = 0
    if D1s is not None:  # predictor UniP-p; order 2 uses the simplified rho = 1/2
        rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
        pred_res = torch.tensordot(D1s, rhos_p, dims=([1], [0]))
    x_t = x_t_ - _bcast(alpha_t * B_h, ndim) * pred_res
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(R, b)
    model_t = model_fn(x_t, t)
    corr_res = torch.tensordot(D1s, rhos_c[:-1], dims=([1], [0])) if D1s is not None else 0
    x_t = x_t_ - _bcast(alpha_t * B_h, ndim) * (corr_res + rhos_c[-1] * (model_t - m0))
    return x_t, model_t


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1"):
    """UniPC multistep with UniC corrector (Zhao et al. 2023), B(h) = h; ComfyUI's uni_pc."""
    extra_args = {} if extra_args is None else extra_args
    if len(sigmas) <= 1:
        return x
    timesteps = sigmas.clone()
    if timesteps[-1] == 0:
        timesteps[-1] = FINAL_SIGMA
    steps, batch = len(timesteps) - 1, x.shape[0]
    order = min(3, steps - 1)

    def model_fn(x_vp, t):
        return _data_prediction(model, x_vp, t, extra_args)

    def at(k):
        return timesteps[k].expand(batch)

    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)
    model_prev, t_prev = [model_fn(x, at(0))], [at(0)]
    sigma_x = timesteps[0]  # where x is now
    for i in range(steps):
        if 0 < i < order:  # warm-up: order i from the i predictions so far
            x, model_x = unipc_bh_update(model_fn, x, model_prev, t_prev, at(i), i, variant, True)
            model_prev, t_prev, sigma_x = model_prev + [model_x], t_prev + [at(i)], timesteps[i]
        elif i > 0:  # the last step index also takes the final step, without corrector
            for step in range(i, i + 1 + (i == steps - 1)):
                step_order = min(order, steps + 1 - step)
                x, model_x = unipc_bh_update(model_fn, x, model_prev, t_prev, at(step), step_order, variant,
                                             step < steps)
                t_prev, sigma_x = (t_prev + [at(step)])[-order:], timesteps[step]
                model_prev = (model_prev + [model_x])[-order:] if step < steps else model_prev[1:] + model_prev[-1:]
        if callback is not None:
            callback({"x": x * torch.sqrt(1.0 + sigma_x ** 2.0), "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": model_prev[-1]})
    return x / _alpha(timesteps[-1])


@torch.no_grad()
def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """UniPC with B(h) = e^h - 1 (bh2, recommended for guided sampling); ComfyUI's uni_pc_bh2."""
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2")
