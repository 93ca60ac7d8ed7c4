"""What every sampler's loop shares: its arguments made usable, the model called at a sigma for
the whole batch, and the first call of a step reported to the callback as k-diffusion does.

A sampler keeps its own arithmetic (each follows ComfyUI's k-diffusion fork operation by
operation); only this plumbing lives here, so a change to how the model is called or what the
callback gets is made once."""

from __future__ import annotations

import torch

from .noise import NoiseSampler, cpu_noise_sampler


class Run:
    """One sampling run of ``model`` from ``x``.

    ``run(x, sigma)`` is the denoiser at one sigma for every batch item; ``run.step(x, i, sigmas)``
    is the step's first call, reported to ``callback`` with ``{"x", "i", "sigma", "sigma_hat",
    "denoised"}`` (``sigma_hat`` is the churned sigma where the sampler raised it, else
    ``sigmas[i]``). ``run.noise`` is the given noise sampler, or independent CPU noise seeded
    from ``extra_args["seed"]`` (k-diffusion's default)."""

    def __init__(self, model, x: torch.Tensor, extra_args: dict | None, callback=None,
                 noise_sampler: NoiseSampler | None = None):
        self.model, self.callback = model, callback
        self.extra_args = {} if extra_args is None else extra_args
        self.s_in = x.new_ones([x.shape[0]])
        self.noise = cpu_noise_sampler(x, self.extra_args.get("seed")) if noise_sampler is None else noise_sampler

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.model(x, sigma * self.s_in, **self.extra_args)

    def report(self, x: torch.Tensor, i: int, sigmas: torch.Tensor, denoised: torch.Tensor,
               sigma_hat: torch.Tensor | None = None) -> None:
        if self.callback is not None:
            sigma_hat = sigmas[i] if sigma_hat is None else sigma_hat
            self.callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})

    def step(self, x: torch.Tensor, i: int, sigmas: torch.Tensor, sigma_hat: torch.Tensor | None = None
             ) -> torch.Tensor:
        """D(x; sigma_hat or sigmas[i]), reported to the callback."""
        denoised = self(x, sigmas[i] if sigma_hat is None else sigma_hat)
        self.report(x, i, sigmas, denoised, sigma_hat)
        return denoised
