"""ComfyUI's ``comfy.sample``: seeded initial noise and the two sampling entry points packs
call (``sample`` with a sampler and scheduler name, ``sample_custom`` with a SAMPLER value and
sigmas), over latentgraph's sampling (see comfy/samplers.py). Results come back on the CPU,
ComfyUI's intermediate device."""

from __future__ import annotations

import sys
from typing import Callable

import numpy as np  # packs reach numpy as comfy.sample.np, as through ComfyUI's module
import torch

import comfy.samplers
import comfy.utils
from comfy.k_diffusion.sampling import _ReplacementNotice
from latentgraph.comfy_compat import runtime
from latentgraph.sampling.noise import prepare_noise as _prepare_noise

__all__ = ["cleanup_additional_models", "fix_empty_latent_channels", "np", "prepare_noise", "prepare_sampling",
           "sample", "sample_custom"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


sys.modules[__name__].__class__ = _ReplacementNotice  # a pack replacing a function here is told what follows it


def prepare_noise(latent_image: torch.Tensor, seed: int, noise_inds: list[int] | None = None) -> torch.Tensor:
    """The initial noise KSampler uses for ``seed``, on the CPU: one draw of the latent's shape,
    or with ``noise_inds`` (a LATENT's batch_index) one draw per index up to the largest, kept for
    the listed ones. Drawn in float32 (ComfyUI draws in the latent's dtype: the same for float32
    latents) and returned in the latent's dtype."""
    return _prepare_noise(latent_image, seed, noise_inds).to(latent_image.dtype)


def fix_empty_latent_channels(model, latent_image: torch.Tensor, downscale_ratio_spacial=None,
                              downscale_ratio_temporal=None) -> torch.Tensor:
    """An empty (all-zero) latent with another channel count than the model's is widened or cut
    to the model's channels. The downscale ratios (passed by packs written for later ComfyUI
    versions, from LATENT keys latentgraph's latents do not have) must be None."""
    if downscale_ratio_spacial is not None or downscale_ratio_temporal is not None:
        raise ValueError("comfy.sample.fix_empty_latent_channels: a latent's downscale ratios (a later ComfyUI's "
                         "'downscale_ratio_spacial'/'downscale_ratio_temporal') are not provided by latentgraph")
    channels = model.arch.unet.out_channels  # the UNet predicts in the latent's channels
    if latent_image.shape[1] != channels and torch.count_nonzero(latent_image) == 0:
        latent_image = comfy.utils.repeat_to_batch_size(latent_image, channels, dim=1)
    return latent_image


def prepare_sampling(model, noise_shape, positive, negative, noise_mask):
    """Kept by ComfyUI for old packs: its arguments back, and no extra models."""
    return model, positive, negative, noise_mask, []


def cleanup_additional_models(models) -> None:
    """Kept by ComfyUI for old packs, doing nothing there either: models need no cleanup after
    sampling here."""


def _device(model) -> torch.device:
    return model.placement.device


def sample(model, noise: torch.Tensor, steps: int, cfg: float, sampler_name: str, scheduler: str, positive: list,
           negative: list, latent_image: torch.Tensor, denoise: float = 1.0, disable_noise: bool = False,
           start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
           noise_mask: torch.Tensor | None = None, sigmas: torch.Tensor | None = None,
           callback: Callable | None = None, disable_pbar: bool = False, seed: int | None = None) -> torch.Tensor:
    """KSampler's sampling from given noise: the samples (B, C, h, w) on the CPU.
    ``disable_noise`` is read by the caller (it passes zeros as the noise), as in ComfyUI."""
    sampler = comfy.samplers.KSampler(model, steps=steps, device=_device(model), sampler=sampler_name,
                                      scheduler=scheduler, denoise=denoise, model_options=model.model_options)
    samples = sampler.sample(noise, positive, negative, cfg=cfg, latent_image=latent_image, start_step=start_step,
                             last_step=last_step, force_full_denoise=force_full_denoise, denoise_mask=noise_mask,
                             sigmas=sigmas, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to("cpu")


def sample_custom(model, noise: torch.Tensor, cfg: float, sampler, sigmas: torch.Tensor, positive: list,
                  negative: list, latent_image: torch.Tensor, noise_mask: torch.Tensor | None = None,
                  callback: Callable | None = None, disable_pbar: bool = False,
                  seed: int | None = None) -> torch.Tensor:
    """SamplerCustom's sampling from given noise with a SAMPLER value and sigmas, on the CPU."""
    samples = comfy.samplers.sample(model, noise, positive, negative, cfg, _device(model), sampler, sigmas,
                                    model_options=model.model_options, latent_image=latent_image,
                                    denoise_mask=noise_mask, callback=callback, disable_pbar=disable_pbar, seed=seed)
    return samples.to("cpu")
