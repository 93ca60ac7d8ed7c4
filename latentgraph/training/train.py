"""Train the demo model: latent diffusion on the procedural shapes, with latentgraph's own
VAE, UNet and CLIP code, written as an ordinary SD1-layout checkpoint.

Stage 1 trains a KL autoencoder (SD's VAE architecture at width 32: factor 8, 4 latent
channels), then rescales its latent space so that the SD1 scale factor 0.18215 gives unit
variance. Stage 2 trains the UNet (SD's architecture at width 64) to predict the noise added
on the SD linear schedule (loss weighted by min-SNR), conditioned on a small CLIP text encoder
trained with it (or kept at its random initialisation: ``text_encoder="frozen"``); the caption
is replaced by the empty prompt 10% of the time so classifier-free guidance works.
Seeded; the same machine and thread count give the same file.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..models.checkpoint import build_text_encoders, original_layout, save_checkpoint
from ..models.clip import TextModel
from ..models.families import METADATA_KEY, Architecture
from ..models.management import Placement
from ..models.text_encoders import ClipTextEncoder, TextEncoderConfig
from ..models.unet import UNetConfig, UNetModel
from ..models.vae import AutoencoderKL, VAEConfig
from .shapes import caption, make_dataset, split_combinations

LATENT_SCALE = 0.18215  # the SD1 family's: the trained latents are rescaled to fit it


@dataclass
class TrainConfig:
    """What train-demo does; the defaults take about 28 minutes on 2 CPU cores."""

    seed: int = 0
    vae_steps: int = 2000  # autoencoder optimiser steps
    vae_batch: int = 16
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6  # as SD's autoencoder: the latent only needs to stay near a Gaussian
    initial_logvar: float = -8.0  # start near-deterministic; a bias moving 1e-3 a step would take ages to get here
    pool: int = 16000  # pictures encoded once for stage 2 (positions and sizes vary)
    unet_steps: int = 6000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    min_snr_gamma: float = 5.0  # loss weight min(SNR, gamma) / SNR (Hang et al. 2023); 0 turns it off
    uncond_prob: float = 0.1  # caption dropout for classifier-free guidance
    ema_decay: float = 0.999
    text_encoder: str = "trained"  # or "frozen": random weights, never trained (measured worse; README)
    text_lr: float = 1e-4
    held_out_fraction: float = 0.1  # caption combinations never seen whole in training


def architecture() -> Architecture:
    """The demo model: SD1 layout, small widths."""
    unet = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                      transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=64,
                      num_heads=8, num_head_channels=-1)
    vae = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    text = {"l": TextEncoderConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                                   projection_dim=None)}
    return Architecture("sd15", unet, vae, text, "eps")


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in -1..1."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _lr(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


Progress = Callable[[str, int, int, float], None]  # (stage, step, total, loss)


def train_vae(arch: Architecture, cfg: TrainConfig, combos: list, progress: Progress | None = None) -> AutoencoderKL:
    """Stage 1: reconstruction (MSE) plus a small KL term, on freshly drawn pictures."""
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(arch.vae)
    with torch.no_grad():
        vae.quant_conv.bias[arch.vae.embed_dim:] = cfg.initial_logvar
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    for step in range(cfg.vae_steps):
        _, images = make_dataset(cfg.vae_batch, combos, seed=cfg.seed * 1_000_003 + step)
        x = _to_tensor(images)
        moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        recon = vae.decode(z)
        rec = F.mse_loss(recon, x)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2, 3)).mean()
        loss = rec + cfg.kl_weight * kl
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress:
            progress("vae", step + 1, cfg.vae_steps, float(rec.detach()))
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def rescale_latents(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Scale the latent space (exactly: encoder output up, decoder input down) so that
    ``latent * 0.18215`` has unit standard deviation. Returns the factor applied."""
    mean = vae.encode(images)
    k = (1.0 / LATENT_SCALE) / float(mean.std())
    n = vae.config.embed_dim
    vae.quant_conv.weight[:n] *= k
    vae.quant_conv.bias[:n] *= k
    vae.quant_conv.bias[n:] += 2.0 * math.log(k)  # log-variance of k * z
    vae.post_quant_conv.weight /= k
    return k


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, images: np.ndarray, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and standard deviations of the pool, for stage 2."""
    means, stds = [], []
    for i in range(0, len(images), batch):
        m = vae.quant_conv(vae.encoder(_to_tensor(images[i:i + batch])))
        mean, logvar = m.chunk(2, dim=1)
        means.append(mean)
        stds.append((0.5 * logvar.clamp(-30.0, 20.0)).exp())
    return torch.cat(means), torch.cat(stds)


def train_unet(arch: Architecture, cfg: TrainConfig, latents: tuple[torch.Tensor, torch.Tensor],
               text: ClipTextEncoder, ids: torch.Tensor, labels: torch.Tensor,
               progress: Progress | None = None) -> tuple[UNetModel, ClipTextEncoder]:
    """Stage 2: eps-prediction on the SD linear schedule. ``ids`` holds the token ids of every
    caption, row 0 the empty prompt (used when the caption is dropped); ``labels`` gives each
    pooled picture's row. With ``cfg.text_encoder == "trained"`` the text encoder learns with
    the UNet. Returns the EMA weights of both."""
    torch.manual_seed(cfg.seed + 1)
    unet = UNetModel(arch.unet)
    train_text = cfg.text_encoder == "trained"
    text.train(train_text).requires_grad_(train_text)
    groups = [{"params": list(unet.parameters()), "peak": cfg.unet_lr}]
    if train_text:
        groups.append({"params": list(text.parameters()), "peak": cfg.text_lr})
    else:
        with torch.no_grad():
            table = text(ids)[0]
    ema = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text).requires_grad_(False) if train_text else text  # frozen: nothing to average
    opt = torch.optim.AdamW(groups, lr=cfg.unet_lr, weight_decay=0.0)
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
    snr = alphas_cumprod / (1 - alphas_cumprod)
    weight = snr.clamp(max=cfg.min_snr_gamma) / snr if cfg.min_snr_gamma > 0 else torch.ones_like(snr)
    mean, std = latents
    g = torch.Generator().manual_seed(cfg.seed + 2)
    for step in range(cfg.unet_steps):
        idx = torch.randint(0, len(mean), (cfg.unet_batch,), generator=g)
        x0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=g)) * LATENT_SCALE
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        drop = torch.rand(cfg.unet_batch, generator=g) < cfg.uncond_prob
        rows = torch.where(drop, torch.zeros_like(labels[idx]), labels[idx])
        if train_text:
            used, inverse = rows.unique(return_inverse=True)
            ctx = text(ids[used])[0][inverse]
        else:
            ctx = table[rows]
        err = (unet(xt, t.float(), ctx) - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (err * weight[t]).mean()
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg.unet_steps, group["peak"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            decay = min(cfg.ema_decay, (step + 1) / (step + 10))
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1.0 - decay)
            if train_text:
                for pe, p in zip(ema_text.parameters(), text.parameters()):
                    pe.lerp_(p, 1.0 - decay)
        if progress:
            progress("unet", step + 1, cfg.unet_steps, float(loss.detach()))
    return ema.eval(), ema_text.eval()


def caption_ids(clip: TextModel, captions: list[str]) -> torch.Tensor:
    """Token ids (n, 77) of one-chunk captions, as CLIPTextEncode tokenizes them."""
    rows = []
    for text in captions:
        (chunk,) = clip.tokenize(text)["l"]
        rows.append([tok for tok, _weight in chunk])
    return torch.tensor(rows)


def train_demo(out: str | Path, cfg: TrainConfig = TrainConfig(), progress: Progress | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Run both stages and write the checkpoint (fp16, SD1 layout, architecture in metadata).
    Returns timings and figures."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    arch = architecture()
    train_combos, held_out = split_combinations(cfg.held_out_fraction, cfg.seed)
    report: dict = {"train_combinations": len(train_combos), "held_out_combinations": len(held_out)}
    start = time.perf_counter()
    vae = train_vae(arch, cfg, train_combos, progress)
    report["vae_seconds"] = time.perf_counter() - start

    t = time.perf_counter()
    scenes, images = make_dataset(cfg.pool, train_combos, seed=cfg.seed + 7)
    report["latent_rescale"] = rescale_latents(vae, _to_tensor(images[:512]))
    latents = encode_pool(vae, images)
    torch.manual_seed(cfg.seed + 3)
    text = build_text_encoders(arch)
    clip = TextModel(arch, text, Placement())
    captions = [""] + sorted({caption(c, s, b) for c, s, b in train_combos})
    ids = caption_ids(clip, captions)
    index = {c: i for i, c in enumerate(captions)}
    labels = torch.tensor([index[s.caption] for s in scenes])
    report["prepare_seconds"] = time.perf_counter() - t

    t = time.perf_counter()
    unet, text["l"] = train_unet(arch, cfg, latents, text["l"], ids, labels, progress)
    report["unet_seconds"] = time.perf_counter() - t

    tensors = original_layout(arch, unet, vae, text)
    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in tensors.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tensors, out, metadata={"format": "pt", METADATA_KEY: arch.to_json(),
                                           "latentgraph.trained_on": "procedural shapes (latentgraph.training.shapes)",
                                           "latentgraph.held_out": ";".join(caption(*h) for h in held_out)})
    report["total_seconds"] = time.perf_counter() - start
    report["bytes"] = out.stat().st_size
    log(f"wrote {out} ({report['bytes'] / 1e6:.1f} MB) in {report['total_seconds'] / 60:.1f} min")
    return report
