"""ComfyUI's "alternative" Euler CFG++ (SamplerEulerCFGpp): an Euler step whose derivative adds the
unconditional prediction to the noise direction. Offered by a node only, not a KSampler name."""

from __future__ import annotations

import torch

from .cfg_pp import UncondCapture
from .k_samplers import to_d
from .steps import Run


@torch.no_grad()
def sample_euler_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with d = to_d(x - denoised + uncond, sigma, denoised) (the uncond recorded by a
    post-CFG function, as the cfg_pp samplers do)."""
    capture = UncondCapture(extra_args)
    run = Run(model, x, capture.extra_args, callback)
    for i in range(len(sigmas) - 1):
        denoised = run.step(x, i, sigmas)
        d = to_d(x - denoised + capture(), sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
