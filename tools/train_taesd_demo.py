"""Train the demo model's step-preview decoder: a TAESD-layout decoder (models/taesd.py) at a
reduced width that maps the shapes demo checkpoint's latents, in the sampler's space (the
VAE latent times SD1's 0.18215), to the pictures its own VAE decodes them to.

Data: pictures drawn by latentgraph.training.shapes (every caption combination), encoded with
the checkpoint's VAE (posterior means); a quarter more latents are blends of two of them, the
kind of blurry x0 a sampler predicts early on. The target of every latent is the VAE's decode
of it (so the decoder imitates the VAE, as the published TAESD does), loss MSE in 0..1.
Held-out latents (other pictures) give the PSNR of TAESD and of latent2rgb (upscaled bilinear)
against the full VAE decode. Seeded, CPU; writes fp16 safetensors whose metadata ties the file
to the demo checkpoint's architecture (nodes/preview.py's rule: no other model gets it).

    python tools/train_taesd_demo.py [--steps 3000] [--width 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentgraph.graph.env import SHIPPED_MODELS  # noqa: E402
from latentgraph.models.checkpoint import load_checkpoint  # noqa: E402
from latentgraph.models.taesd import TAESDDecoder  # noqa: E402
from latentgraph.nodes.preview import ARCH_KEY, architecture_id, latent2rgb  # noqa: E402
from latentgraph.training.shapes import combinations, make_dataset  # noqa: E402

CHECKPOINT = SHIPPED_MODELS / "checkpoints" / "latentgraph-shapes.safetensors"
OUT = SHIPPED_MODELS / "vae_approx" / "latentgraph-shapes_taesd_decoder.safetensors"


def options(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--width", type=int, default=16, help="decoder channels (the published decoders have 64)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pool", type=int, default=1536, help="pictures encoded for training")
    p.add_argument("--held-out", type=int, default=128, help="other pictures, for the PSNR figures")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> (B, 3, H, W) in -1..1, the VAE's input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.inference_mode()
def encode(vae, images: np.ndarray, batch: int = 128) -> torch.Tensor:
    return torch.cat([vae.encode(to_pixels(images[i:i + batch])) for i in range(0, len(images), batch)])


@torch.inference_mode()
def decode(vae, latents: torch.Tensor, batch: int = 128) -> torch.Tensor:
    """VAE latents -> pictures (B, 3, H, W) in 0..1."""
    out = [vae.decode(latents[i:i + batch]).float().add(1).div(2).clamp(0, 1) for i in range(0, len(latents), batch)]
    return torch.cat(out)


def blends(latents: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """n mixtures a*z_i + (1-a)*z_j of random pairs, a uniform in 0..1."""
    i = torch.randint(len(latents), (n,), generator=gen)
    j = torch.randint(len(latents), (n,), generator=gen)
    a = torch.rand(n, 1, 1, 1, generator=gen)
    return a * latents[i] + (1 - a) * latents[j]


def data(vae, scale: float, count: int, seed: int, extra_blends: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampler-space latents, their VAE decodes) of ``count`` fresh pictures (+ blends)."""
    _, images = make_dataset(count, combinations(), seed=seed)
    z = encode(vae, images)
    if extra_blends:
        z = torch.cat([z, blends(z, count // 4, torch.Generator().manual_seed(seed))])
    return z * scale, decode(vae, z)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train(z: torch.Tensor, target: torch.Tensor, args) -> TAESDDecoder:
    torch.manual_seed(args.seed)
    decoder = TAESDDecoder(z.shape[1], args.width)
    opt = torch.optim.Adam(decoder.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    started, shown = time.time(), 0.0
    for step in range(args.steps):
        idx = torch.randint(len(z), (args.batch,), generator=gen)
        out = torch.nn.Sequential.forward(decoder, z[idx])  # unclamped while training (gradients at the ends)
        loss = F.mse_loss(out, target[idx])
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if time.time() - shown > 30 or step + 1 == args.steps:
            shown = time.time()
            print(f"step {step + 1}/{args.steps} loss {float(loss.detach()):.5f} ({(shown - started) / 60:.1f} min)", flush=True)
    return decoder.eval().requires_grad_(False)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) between pictures in 0..1."""
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


@torch.inference_mode()
def linear_previews(z: torch.Tensor, size: int) -> torch.Tensor:
    """latent2rgb's previews (what the server sends by default) upscaled bilinear to ``size``."""
    preview = latent2rgb("sd15")
    small = torch.stack([torch.from_numpy(np.array(preview(z[i:i + 1]))) for i in range(len(z))])
    small = small.permute(0, 3, 1, 2).float() / 255
    return F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def save(decoder: TAESDDecoder, path: Path, arch, figures: dict) -> int:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().half().contiguous() for k, v in decoder.state_dict().items()}
    meta = {"format": "pt", ARCH_KEY: architecture_id(arch),
            "latentgraph.preview_for": "latentgraph-shapes.safetensors (the shapes demo checkpoint) only: "
                                       "trained on its VAE's latents, wrong for any other model",
            "latentgraph.trained_on": "procedural shapes (latentgraph.training.shapes), targets: the demo VAE's decodes",
            "latentgraph.training": json.dumps(figures, sort_keys=True)}
    save_file(tensors, str(path), metadata=meta)
    return path.stat().st_size


def main(argv=None) -> int:
    args = options(argv)
    t0 = time.time()
    ck = load_checkpoint(args.checkpoint, parts=("vae",))
    vae = ck.vae.float().eval()
    scale = ck.arch.spec.latent_scale
    z, target = data(vae, scale, args.pool, args.seed * 1_000_003 + 1, True)
    hz, htarget = data(vae, scale, args.held_out, args.seed * 1_000_003 + 2, False)
    prep = time.time() - t0
    print(f"data: {len(z)} training latents, {len(hz)} held out ({prep / 60:.1f} min)", flush=True)
    decoder = train(z, target, args)
    minutes = (time.time() - t0 - prep) / 60
    with torch.inference_mode():
        ours = psnr(decoder(hz), htarget)
        train_fit = psnr(decoder(z[:256]), target[:256])
    linear = psnr(linear_previews(hz, htarget.shape[-1]), htarget)
    figures = {"steps": args.steps, "width": args.width, "batch": args.batch, "seed": args.seed, "pool": args.pool,
               "train_minutes": round(minutes, 1), "psnr_taesd_vs_vae": round(ours, 2),
               "psnr_latent2rgb_vs_vae": round(linear, 2), "psnr_taesd_train": round(train_fit, 2)}
    size = save(decoder, args.out, ck.arch, figures)
    print(json.dumps(figures))
    print(f"held-out PSNR vs the VAE decode: TAESD {ours:.2f} dB, latent2rgb {linear:.2f} dB "
          f"(training latents: TAESD {train_fit:.2f} dB)")
    print(f"wrote {args.out} ({size / 1024:.0f} KiB); data {prep / 60:.1f} min, training {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
