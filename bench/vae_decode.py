"""One VAE decode without tiling (issue 17: "VAE decode of SDXL 1024² without tiling on 24 GB"):
the SD/SDXL VAE (random weights, built in memory) decodes a batch-1 latent of --size pixels in
one piece; prints seconds (best of --runs after a warm-up) and peak memory: on CUDA the
allocator's peak (max_memory_allocated) against the 24 GiB goal, on the CPU the process's peak
RSS growth over the weights.

    python bench/vae_decode.py [--size 1024] [--device auto] [--dtype auto|fp32|bf16|fp16] [--runs 3]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from latentgraph.models.management import resolve_device
from latentgraph.models.vae import AutoencoderKL, VAEConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GOAL_GIB = 24


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="auto: bf16 on CUDA where supported (latentgraph's VAE default there), else fp32")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    device = resolve_device(args.device)
    if args.dtype != "auto":
        dtype = DTYPES[args.dtype]
    elif device.type == "cuda" and torch.cuda.is_bf16_supported():
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    torch.manual_seed(0)
    vae = AutoencoderKL(VAEConfig.sd()).eval().requires_grad_(False).to(device, dtype)
    z = torch.randn(1, 4, args.size // 8, args.size // 8, device=device, dtype=dtype)
    weights_rss = peak_rss_gib()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for i in range(args.runs + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            image = vae.decode(z)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    assert image.shape[-2:] == (args.size, args.size)
    print(f"VAE decode {args.size}x{args.size}, one piece, {device} {str(dtype)[6:]}: best {min(times):.2f} s "
          f"of {args.runs}")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak allocated {peak:.2f} GiB (goal: fits {GOAL_GIB} GiB: {'yes' if peak < GOAL_GIB else 'NO'})")
    else:
        print(f"peak RSS {peak_rss_gib():.2f} GiB, {peak_rss_gib() - weights_rss:.2f} GiB over the weights")


if __name__ == "__main__":
    main()
