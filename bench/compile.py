"""--compile against eager on a full-size UNet (random weights, built in memory), one process:
compile seconds (first call), then eager and compiled forwards alternating (CFG batch 2),
their median seconds and ratio, and the PSNR of the compiled output against eager (goal >= 40
dB; outputs mapped to 0..255 over eager's range).

    python bench/compile.py [--family sd15|sdxl] [--size 256] [--device auto] [--dtype auto|fp32|bf16|fp16]
                            [--mode regional|full] [--runs 5]

On a GPU (issue 17's figures: SD1.5 512², SDXL 1024², fp16) a run prints what --compile buys
there; on this project's CPU it shows what inductor's fused C++ kernels buy.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch

from latentgraph.models.compile import compile_unet, run_compiled
from latentgraph.models.management import resolve_device
from latentgraph.models.unet import UNetConfig, UNetModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    lo, hi = ref.min(), ref.max()
    scale = 255.0 / float(hi - lo) if hi > lo else 1.0
    mse = float(((out.float() - ref.float()) * scale).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto: fp16 on CUDA, fp32 on the CPU")
    p.add_argument("--mode", choices=["regional", "full"], default="regional")
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    device = resolve_device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.float16 if device.type == "cuda" else torch.float32)
    cfg = UNetConfig.sd15() if args.family == "sd15" else UNetConfig.sdxl()
    torch.manual_seed(0)
    eager = UNetModel(cfg).eval().requires_grad_(False).to(device, dtype)
    side = args.size // 8
    x = torch.randn(2, 4, side, side, device=device, dtype=dtype)
    t = torch.tensor([500.0, 500.0], device=device)
    ctx = torch.randn(2, 77, cfg.context_dim, device=device, dtype=dtype)
    y = None if cfg.adm_in_channels is None else torch.randn(2, cfg.adm_in_channels, device=device, dtype=dtype)
    print(f"{args.family} {args.size}x{args.size} batch 2, {device} {str(dtype)[6:]}, --compile {args.mode}, "
          f"torch {torch.__version__}")
    with torch.inference_mode():
        ref = eager(x, t, ctx, y)
        compiled = copy.deepcopy(eager)  # regional compiles blocks in place: keep an eager twin
        compile_unet(compiled, args.mode, device)
        sync(device)
        t0 = time.perf_counter()
        out = run_compiled(lambda: compiled(x, t, ctx, y), args.mode)
        sync(device)
        print(f"first compiled call (compiles): {time.perf_counter() - t0:.1f} s")
        times = {"eager": [], "compiled": []}
        for _ in range(args.runs):
            for name, call in (("eager", lambda: eager(x, t, ctx, y)), ("compiled", lambda: compiled(x, t, ctx, y))):
                sync(device)
                t0 = time.perf_counter()
                call()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"forward: eager {e:.3f} s, compiled {c:.3f} s, speed-up {e / c:.2f}x (medians of {args.runs}, alternating)")
    print(f"PSNR compiled vs eager: {psnr(out, ref):.1f} dB (goal >= 40)")


if __name__ == "__main__":
    main()
