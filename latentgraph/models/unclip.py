"""unCLIP image conditioning: CLIP image embeddings, noise-augmented, become the UNet's vector y.

SD2.1-unCLIP (L: 768-wide ViT-L/14 embeddings, H: 1024-wide ViT-H/14) reads y = [noised
embedding, embedding of the noise level], both D wide (label_emb takes 2D). SDXL base
"Revision" puts the noised embedding (1280 wide, ViT-bigG/14) where the pooled text goes.

The numbers follow ComfyUI's so that a shared workflow gives the same picture:

- the noise schedule is the "squaredcos_cap_v2" cosine schedule over 1000 steps, computed in
  float64 and stored in float32; the level is ``round(999 * noise_augmentation)``;
- the noise is ``torch.randn((1, D))`` from a CPU generator seeded with the sampler's seed
  minus 10, drawn afresh for every image (so every image of one seed gets the same noise);
- with more than one image in all (a batch, or chained unCLIPConditioning entries), each
  weighted [embedding, level] is summed, and the first D values of the sum are noised once
  more at a "merge" level (SD2.1-unCLIP 0.05, Revision 0), with the next D values of the
  last generator; the checkpoint's own ``noise_augmentor.*`` buffers are not read (the
  schedule is computed), nor a data mean/std (ComfyUI uses 0 and 1).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from .unet import timestep_embedding

STEPS = 1000  # noise levels of the augmentor's schedule
SEED_OFFSET = 10  # the generator is seeded with the sampler's seed minus this
MERGE_UNCLIP, MERGE_REVISION = 0.05, 0.0  # noise_augmentation of the merged embedding


def _betas() -> list[float]:
    """squaredcos_cap_v2 over STEPS steps, in float64 (Python floats)."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return [min(1 - alpha_bar((i + 1) / STEPS) / alpha_bar(i / STEPS), 0.999) for i in range(STEPS)]


def _alphas_cumprod() -> torch.Tensor:
    """float64 (STEPS,), one product at a time (as numpy's cumprod)."""
    out, prod = [], 1.0
    for beta in _betas():
        prod *= 1.0 - beta
        out.append(prod)
    return torch.tensor(out, dtype=torch.float64)


@lru_cache(maxsize=1)
def _schedule() -> tuple[torch.Tensor, torch.Tensor]:
    """(sqrt(alphas_cumprod), sqrt(1 - alphas_cumprod)) in float32 (STEPS,), rounded from float64."""
    ac = _alphas_cumprod()
    return ac.sqrt().float(), (1 - ac).sqrt().float()


def noise_level(noise_augmentation: float) -> int:
    """The schedule step of a noise_augmentation in [0, 1] (Python's round, as ComfyUI's)."""
    return round((STEPS - 1) * noise_augmentation)


def augment(embeds: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    """(1, D) embedding noised to ``level``, then its level's timestep embedding: (1, 2D)."""
    signal, sigma = _schedule()
    noised = signal[level] * embeds + sigma[level] * noise
    return torch.cat([noised, timestep_embedding(torch.tensor([float(level)]), embeds.shape[-1])], dim=1)


def unclip_entries_problem(entries: object) -> str | None:
    """Why ``unclip_conditioning`` (a list of {clip_vision_output, strength, noise_augmentation})
    cannot be read, or None."""
    if not isinstance(entries, (list, tuple)) or not entries:
        return "unclip_conditioning must be a non-empty list of entries"
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"clip_vision_output", "strength", "noise_augmentation"} <= set(entry):
            return (f"unclip_conditioning entry {n} must be a dict with clip_vision_output, strength and "
                    f"noise_augmentation")
        embeds = getattr(entry["clip_vision_output"], "image_embeds", None)
        if not isinstance(embeds, torch.Tensor) or embeds.dim() != 2 or embeds.shape[0] == 0:
            return f"unclip_conditioning entry {n}: its CLIP vision output has no (B, D) image_embeds"
        if not 0.0 <= float(entry["noise_augmentation"]) <= 1.0:
            return f"unclip_conditioning entry {n}: noise_augmentation {entry['noise_augmentation']} is not in [0, 1]"
    return None


def unclip_adm(entries: list, dim: int, seed: int, merge: float, what: str) -> torch.Tensor:
    """The (1, 2 * dim) vector of unCLIP conditioning ``entries`` for the sampler's ``seed``,
    on the CPU in float32. ``what`` names the model for errors (image width must be ``dim``)."""
    problem = unclip_entries_problem(entries)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    outs, generator = [], None
    for entry in entries:
        embeds = entry["clip_vision_output"].image_embeds
        if embeds.shape[-1] != dim:
            raise ValueError(
                f"{what} takes CLIP image embeddings {dim} wide; this CLIP vision output's image_embeds are "
                f"{embeds.shape[-1]} wide (a CLIP vision model of another size: unCLIP-L needs ViT-L/14 (768), "
                f"unCLIP-H ViT-H/14 (1024), SDXL Revision ViT-bigG/14 (1280))")
        level = noise_level(float(entry["noise_augmentation"]))
        for row in embeds.detach().float().cpu():
            generator = torch.Generator(device="cpu").manual_seed(seed - SEED_OFFSET)
            noise = torch.randn((1, dim), generator=generator, dtype=torch.float32)
            outs.append(augment(row[None], level, noise) * float(entry["strength"]))
    if len(outs) == 1:
        return outs[0]
    total = torch.stack(outs).sum(0)
    noise = torch.randn((1, dim), generator=generator, dtype=torch.float32)  # the last generator, drawn on
    return augment(total[:, :dim], noise_level(merge), noise)


def schedule_buffers() -> dict[str, torch.Tensor]:
    """The noise augmentor's schedule as the published unCLIP checkpoints store it under
    ``noise_augmentor.`` (written by make-checkpoint; the loader computes it, as ComfyUI does)."""
    ac = _alphas_cumprod()
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    values = {"betas": torch.tensor(_betas(), dtype=torch.float64), "alphas_cumprod": ac, "alphas_cumprod_prev": prev,
              "sqrt_alphas_cumprod": ac.sqrt(), "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
              "log_one_minus_alphas_cumprod": (1 - ac).log(), "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
              "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt()}
    return {name: value.float() for name, value in values.items()}
