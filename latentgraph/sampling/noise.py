"""Seeded noise: the initial latent noise and the per-step noise of stochastic samplers.

Every draw comes from an explicit CPU ``torch.Generator`` (never the global one), so results do
not depend on the device and two jobs never disturb each other. The streams are the ones
ComfyUI uses on the CPU: ``prepare_noise`` is bit-identical to comfy.sample.prepare_noise, the
step noise to k-diffusion's default noise sampler and its BrownianTreeNoiseSampler(cpu=True).
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
import torchsde

# noise_sampler(sigma, sigma_next) -> unit-variance noise shaped like the sample
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a fresh non-deterministic seed when None)."""
    g = torch.Generator(device="cpu")
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: list[int] | None = None) -> torch.Tensor:
    """Initial noise for a latent (B, C, H, W), float32 on the CPU.

    Without ``batch_index`` one draw of the full shape. With it, one (1, C, H, W) draw per index
    0..max(batch_index), kept for the listed indices in the listed order, so image k of a batch
    gets the same noise as a single image generated at index k. (The two recipes differ when
    C*H*W is not a multiple of 16: torch's CPU normal sampler fills blocks of 16.)"""
    g = _generator(seed)
    shape = tuple(latent.shape)
    if batch_index is None:
        return torch.randn(shape, generator=g, dtype=torch.float32, device="cpu")
    wanted = set(batch_index)
    draws = {}
    for i in range(max(batch_index) + 1):
        draw = torch.randn((1,) + shape[1:], generator=g, dtype=torch.float32, device="cpu")
        if i in wanted:
            draws[i] = draw
    return torch.cat([draws[i] for i in batch_index], dim=0)


def cpu_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """Independent standard normal noise at every call, from one CPU generator seeded once."""
    g = _generator(seed)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=g, dtype=torch.float32, device="cpu").to(x.device, x.dtype)

    return sample


def brownian_noise_sampler(x: torch.Tensor, sigma_min: torch.Tensor | float, sigma_max: torch.Tensor | float,
                           seed: int | None, on_device: bool = False) -> NoiseSampler:
    """Noise from one Brownian motion W(sigma) over [sigma_min, sigma_max] (a torchsde
    BrownianTree): the call for (sigma, sigma_next) returns the normalised increment
    (W(sigma_next) - W(sigma)) / sqrt(|sigma_next - sigma|), so SDE samplers see consistent noise
    whatever their step sizes (Kidger et al. 2021, "Efficient and Accurate Gradients for Neural
    SDEs"). Same tree, queries and signs as k-diffusion's BrownianTreeNoiseSampler: by default the
    tree lives on the CPU (``cpu=True``, the plain SDE samplers); ``on_device`` builds and queries
    it on the latent's device as ComfyUI's ``*_gpu`` samplers do (``cpu=False``): on a GPU its
    random draws are the device's, so the picture differs from the CPU tree's; on the CPU the two
    are the same tree."""
    if seed is None:
        seed = int(torch.randint(0, 2 ** 63 - 1, (), generator=_generator(None)))
    home = x.device if on_device else torch.device("cpu")
    t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
    flip = 1
    if not t0 < t1:
        t0, t1, flip = t1, t0, -1
    w0 = torch.zeros(x.shape, dtype=x.dtype, device=home)
    tree = torchsde.BrownianTree(t0.detach().to(home), w0, t1.detach().to(home), entropy=seed)

    def sample(sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        a, b = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        lo, hi, sign = (a, b, 1) if a < b else (b, a, -1)
        with warnings.catch_warnings():  # torchsde warns when rounding puts a query a hair outside
            warnings.filterwarnings("ignore", message="Should have", category=UserWarning)  # its interval
            if on_device:  # k-diffusion queries a device tree with the sigmas as they are
                w = tree(lo.detach(), hi.detach())
            else:
                w = tree(lo.detach().cpu().float(), hi.detach().cpu().float())
        w = w.to(device=lo.device, dtype=lo.dtype) * (flip * sign)
        return w.to(x.device) / (b - a).abs().sqrt()

    return sample
