"""Sigma lists of the custom-sampling nodes: schedules from k-diffusion and papers, and edits of a
list (flip, extend, split). Pure functions of their arguments; numerics follow ComfyUI's nodes
(same float32 steps), so a schedule node gives ComfyUI's list.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import torch

# Align Your Steps (Sabour et al. 2024): the published 10-step noise levels per model family
AYS_NOISE_LEVELS = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def polyexponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion's polynomial-in-log-sigma schedule (rho 1: evenly spaced in log sigma)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def vp_sigmas(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """The continuous variance-preserving SDE's sigmas (Song et al. 2021) at t from 1 to eps_s."""
    t = torch.linspace(1, eps_s, n)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t ** 2 / 2 + beta_min * t)))


def laplace_sigmas(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Log sigma at the quantiles of a Laplace(mu, beta) distribution (Hang et al. 2024), clamped
    to [sigma_min, sigma_max]. As in ComfyUI the list has n entries and does not end in 0."""
    x = torch.linspace(0, 1, n)
    log_sigma = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + 1e-5)  # 1e-5: no log(0)
    return torch.clamp(torch.exp(log_sigma), min=sigma_min, max=sigma_max)


def loglinear_interp(levels: list[float], num: int) -> np.ndarray:
    """``num`` values spread over a decreasing list, interpolated linearly in log space."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def denoised_tail(levels: list[float], steps: int, denoise: float) -> torch.Tensor:
    """A table schedule resampled to ``steps`` steps, the last round(steps * denoise) of them kept,
    ending in 0 (AlignYourSteps, GITS). denoise <= 0: an empty list."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.FloatTensor([])
        total = round(steps * denoise)
    sigmas = list(levels) if steps + 1 == len(levels) else loglinear_interp(levels, steps + 1)
    sigmas = sigmas[-(total + 1):]
    sigmas[-1] = 0
    return torch.FloatTensor(np.asarray(sigmas, dtype=np.float64))


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The list reversed (for unsampling); a leading 0 becomes 0.0001 so the first step has a sigma."""
    if len(sigmas) == 0:
        return sigmas
    sigmas = sigmas.flip(0)
    if sigmas[0] == 0:
        sigmas[0] = 0.0001
    return sigmas


SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def extend_sigmas(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                  spacing: str) -> torch.Tensor:
    """Each step that starts at a sigma in [end_at_sigma, start_at_sigma] (start < 0: no upper
    bound) is split into ``steps`` sub-steps spaced by ``spacing``."""
    if start_at_sigma < 0:
        start_at_sigma = float("inf")
    fractions = SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    out: list[float] = []
    for i in range(len(sigmas) - 1):
        current, nxt = sigmas[i], sigmas[i + 1]
        out.append(float(current))
        if end_at_sigma <= current <= start_at_sigma:
            out.extend((fractions * (nxt - current) + current).tolist())
    if len(sigmas) > 0:
        out.append(float(sigmas[-1]))
    return torch.FloatTensor(out)


def split_sigmas_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): low holds the last round(steps * denoise) steps, high the ones before them.
    As in ComfyUI, denoise rounding to 0 steps gives an empty high list (sigmas[:-0])."""
    steps = max(sigmas.shape[-1] - 1, 0)
    total = round(steps * denoise)
    return sigmas[:-total], sigmas[-(total + 1):]


@functools.cache
def gits_noise_levels() -> dict[str, list[list[float]]]:
    """GITS' (Chen et al. 2024) optimised SD1 noise levels: coefficient "0.80".."1.50" -> one list
    per step count 2..20 (latentgraph/data/gits_noise_levels.json)."""
    path = Path(__file__).resolve().parent.parent / "data" / "gits_noise_levels.json"
    return json.loads(path.read_text())["levels"]


def gits_sigmas(coeff: float, steps: int, denoise: float) -> torch.Tensor:
    """GITS' schedule for a coefficient (a multiple of 0.05 from 0.80 to 1.50): the published
    list for up to 20 steps, the 20-step list log-interpolated beyond; denoise keeps the tail."""
    levels = gits_noise_levels()
    key = f"{round(coeff, 2):.2f}"
    if key not in levels:  # ComfyUI fails here with a bare KeyError
        raise ValueError(f"GITSScheduler: input 'coeff' must be one of {', '.join(levels)}, got {coeff}")
    if steps < 2:
        raise ValueError(f"GITSScheduler: input 'steps' must be at least 2, got {steps}")
    table = levels[key]
    if steps <= len(table) + 1:
        return denoised_tail(table[steps - 2], steps, denoise)
    return denoised_tail(table[-1], steps, denoise)
