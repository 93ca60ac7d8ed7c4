"""LCM sampling that grows the latent between steps (ComfyUI's SamplerLCMUpscale).

Each step takes the model's clean prediction, resizes it one notch towards ``total_upscale`` times
the starting size, and adds fresh noise at the next sigma, so the picture is drawn at the small
size first and refined at the large one. The resize itself is passed in (``resize``), so that
this module needs nothing from the node layer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .steps import Run

# resize(x (B, C, H, W), width, height) -> (B, C, height, width)
Resize = Callable[[torch.Tensor, int, int], torch.Tensor]


def upscale_sizes(width: int, height: int, n_sigmas: int, total_upscale: float,
                  upscale_steps: int | None) -> list[tuple[int, int]]:
    """The (width, height) after each resizing step, for a schedule of ``n_sigmas`` sigmas.

    ``upscale_steps`` None spreads the growth over about half the steps; otherwise that many
    steps (at most the schedule's). The factors are numpy's linspace from 1 to ``total_upscale``
    without its first point, and each size is Python's round of the scaled side, as ComfyUI's."""
    if upscale_steps is None:
        points = max(n_sigmas // 2 + 1, 2)
    else:
        points = min(upscale_steps + 1, n_sigmas + 1)
    factors = np.linspace(1.0, total_upscale, points)[1:]
    return [(round(width * float(f)), round(height * float(f))) for f in factors]


def _noise_stream(x: torch.Tensor, seed: int | None) -> torch.Generator:
    """ComfyUI draws this sampler's noise from torch's global generator, which its RandomNoise
    seeded and then used for the initial noise (one float32 draw of the latent's shape): a CPU
    generator in that same state gives the same numbers on the CPU, without global state."""
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
        return g
    g.manual_seed(seed)
    torch.randn(tuple(x.shape), generator=g, dtype=torch.float32, device="cpu")  # the initial noise's draw
    return g


@torch.no_grad()
def sample_lcm_upscale(model, x, sigmas, extra_args=None, callback=None, disable=None, total_upscale=2.0,
                       upscale_method="bislerp", upscale_steps=None, resize: Resize | None = None,
                       check_size: Callable[[tuple[int, ...]], None] | None = None):
    """LCM (x = denoised + sigma_next * noise) with the prediction resized after each of the first
    steps, up to ``total_upscale`` times the start size (ComfyUI's sample_lcm_upscale).
    ``resize(x, width, height)`` does ``upscale_method``'s resize; ``check_size(shape)`` may refuse
    the largest latent before anything is sampled."""
    if resize is None:
        raise ValueError(f"sample_lcm_upscale needs a resize function for {upscale_method!r}")
    run = Run(model, x, extra_args, callback, noise_sampler=lambda *_: None)
    sizes = upscale_sizes(x.shape[-1], x.shape[-2], len(sigmas), total_upscale, upscale_steps)
    if check_size is not None and sizes:
        check_size(tuple(x.shape[:-2]) + (max(h for _, h in sizes), max(w for w, _ in sizes)))
    g = _noise_stream(x, run.extra_args.get("seed"))
    # ComfyUI's bislerp leaves a batch of two or more channels-last, and its UNet keeps that layout
    # for every later prediction; the first resize comes after step 0, so every draw has it
    channels_last = upscale_method == "bislerp" and x.shape[0] > 1 and len(sizes) > 0
    start = tuple(x.shape)
    for i in range(len(sigmas) - 1):
        try:
            denoised = run.step(x, i, sigmas)
        except RuntimeError as exc:
            if tuple(x.shape) == start:
                raise
            # a noise mask or a conditioning sized for the starting latent cannot follow the growth
            raise ValueError(f"SamplerLCMUpscale: at step {i + 1} the latent is {x.shape[-1]}x{x.shape[-2]} (it "
                             f"started {start[-1]}x{start[-2]}) and the model could not take it: {exc}. A noise "
                             "mask or an inpainting model's image is made for the starting size; sample "
                             "those with scale_ratio 1") from None
        x = denoised
        if i < len(sizes):
            x = resize(x, *sizes[i])
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * step_noise(tuple(x.shape), g, channels_last).to(x.device, x.dtype)
    return x


def step_noise(shape: tuple[int, ...], g: torch.Generator, channels_last: bool) -> torch.Tensor:
    """Standard normal noise (B, C, H, W) as ComfyUI's ``randn_like`` of the resized latent gives it.

    torch's CPU normal fills a contiguous tensor 16 values at a time but any other one value by
    value in memory order, so the numbers depend on the layout: channels-last is memory order
    B, H, W, C."""
    if not channels_last:
        return torch.randn(shape, generator=g, dtype=torch.float32, device="cpu")
    b, c, h, w = shape
    return torch.empty_strided(shape, (h * w * c, 1, w * c, c), dtype=torch.float32).normal_(generator=g)
