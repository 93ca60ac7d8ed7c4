"""CFG++ samplers (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance",
arXiv:2406.08070): the step moves the sample along the *unconditional* noise estimate and lands
on the guided denoised one, which keeps guided sampling on the data manifold at low cfg.

The uncond prediction comes from the guided denoiser through the patch layer, as in ComfyUI: the
sampler adds a ``sampler_post_cfg_function`` that records ``args["uncond_denoised"]`` and sets
``disable_cfg1_optimization`` (so at cfg 1 the negative prompt is still evaluated), and hands
those options to every call as ``extra_args["model_options"]``. Same calling convention as
``k_samplers``; the numerics follow ComfyUI's k-diffusion fork operation by operation.
"""

from __future__ import annotations

import torch

from .dpm_solver import half_log_snr
from .k_samplers import ancestral_step, to_d
from .steps import Run


class UncondCapture:
    """extra_args whose model_options record each call's unconditional prediction in ``uncond``."""

    def __init__(self, extra_args: dict | None):
        extra_args = {} if extra_args is None else extra_args
        options = dict(extra_args.get("model_options") or {})
        options["sampler_post_cfg_function"] = [*options.get("sampler_post_cfg_function", ()), self._record]
        options["disable_cfg1_optimization"] = True
        self.extra_args = {**extra_args, "model_options": options}
        self.uncond: torch.Tensor | None = None

    def _record(self, args: dict) -> torch.Tensor:
        self.uncond = args["uncond_denoised"]
        return args["denoised"]

    def __call__(self) -> torch.Tensor:
        if self.uncond is None:
            raise ValueError("a cfg_pp sampler needs a guided denoiser that calls model_options' "
                             "sampler_post_cfg_function (the KSampler's CFG); this model did not")
        return self.uncond


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                  s_noise=1.0, noise_sampler=None):
    """Ancestral Euler (DDIM with stochasticity eta) with CFG++: the noise direction is the uncond one."""
    uncond = UncondCapture(extra_args)
    run = Run(model, x, uncond.extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        # alpha = sigma * exp(lambda) is 1 here, computed as ComfyUI does so rounding matches
        alpha_s = sigmas[i] * half_log_snr(sigmas[i]).exp()
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1]).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond())
        sigma_down, sigma_up = ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta=eta)
        x = alpha_t * denoised + alpha_t * sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler steps with CFG++ (the ancestral sampler with eta = 0: deterministic)."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=extra_args, callback=callback, eta=0.0,
                                         s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                                     s_noise=1.0, noise_sampler=None):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022) with CFG++: the midpoint r = 1/2 in log-sigma."""
    uncond = UncondCapture(extra_args)
    run = Run(model, x, uncond.extra_args, callback, noise_sampler)
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond()) * sigma_down
        else:
            t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigma_down)
            h = t_next - t
            s = t + h / 2
            # x + (denoised - uncond): the sample moved from the uncond to the guided estimate
            shifted = x + (denoised - uncond())
            x_2 = (s.neg().exp() / t.neg().exp()) * shifted - (-h / 2).expm1() * denoised
            denoised_2 = run(x_2, s.neg().exp())
            x = (t_next.neg().exp() / t.neg().exp()) * (x + (denoised - uncond())) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + run.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M) (Lu et al. 2022) with CFG++: the multistep correction uses uncond history."""
    uncond = UncondCapture(extra_args)
    run = Run(model, x, uncond.extra_args, callback)
    old_uncond = None
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        t, t_next = half_log_snr(sigmas[i]), half_log_snr(sigmas[i + 1])
        h = t_next - t
        if old_uncond is None or sigmas[i + 1] == 0:
            mix = -torch.exp(-h) * uncond()
        else:
            r = (t - half_log_snr(sigmas[i - 1])) / h
            mix = -torch.exp(-h) * uncond() - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + mix + torch.exp(-h) * x
        old_uncond = uncond()
    return x
