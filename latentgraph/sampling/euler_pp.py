"""ComfyUI's "alternative" Euler CFG++ (SamplerEulerCFGpp): an Euler step whose derivative adds the
unconditional prediction to the noise direction. Offered by a node only, not a KSampler name."""

from __future__ import annotations

import torch

from .cfg_pp import UncondCapture
from .k_samplers import to_d


@torch.no_grad()
def sample_euler_pp(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """Euler with d = to_d(x - denoised + uncond, sigma, denoised) (the uncond recorded by a
    post-CFG function, as the cfg_pp samplers do)."""
    capture = UncondCapture({} if extra_args is None else extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **capture.extra_args)
        d = to_d(x - denoised + capture(), sigmas[i], denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
