"""Where the CPU's convolution time goes, and what models/cpu_kernels.py's GEMM path buys.

1. Every 3x3 convolution shape of the SD1.5 UNet at the chosen size, batch 2 (the CFG batch):
   oneDNN (F.conv2d) vs unfold + GEMM, best of N, with the weight-elements-per-pixel ratio the
   dispatcher decides by and the choice it makes.
2. A full-size SD1.5 UNet forward (random weights, built in memory) with the path on and off,
   alternating in one process, in fp32 (exact mode) and bf16 (fast mode).
3. With --profile: torch.profiler's per-op table of one forward in each dtype (where the time
   goes: convolution, GEMM, attention, norms, copies).

    python bench/conv_kernels.py [--size 256] [--runs 3] [--dtypes fp32,bf16] [--shapes-only] [--profile]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from latentgraph.models import cpu_kernels
from latentgraph.models.cpu_kernels import conv2d_gemm, gemm_pays
from latentgraph.models.unet import UNetConfig, UNetModel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def conv_shapes(unet: UNetModel, size: int) -> list[tuple]:
    """(in, out, kernel, stride, input side) of each distinct convolution in a forward."""
    seen, shapes = set(), []

    def hook(module, args):
        x = args[0]
        key = (module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0], x.shape[-1])
        if key not in seen:
            seen.add(key)
            shapes.append(key)

    handles = [m.register_forward_pre_hook(hook) for m in unet.modules() if isinstance(m, cpu_kernels.Conv2d)]
    side = size // 8
    with torch.inference_mode():
        unet(torch.randn(2, 4, side, side, device="meta"), torch.ones(2, device="meta"),
             torch.randn(2, 77, 768, device="meta"))
    for h in handles:
        h.remove()
    return shapes


def shape_table(shapes: list[tuple], dtype: torch.dtype, runs: int) -> None:
    print(f"\n{'in':>5} {'out':>5} k s {'side':>4} {'w/px':>7}  {'oneDNN ms':>9} {'GEMM ms':>8}  faster  chosen")
    for cin, cout, k, s, side in shapes:
        x = torch.randn(2, cin, side, side, dtype=dtype)
        w = torch.randn(cout, cin, k, k, dtype=dtype)
        b = torch.randn(cout, dtype=dtype)
        pad = k // 2
        out_side = (side + 2 * pad - k) // s + 1
        with torch.inference_mode():
            t_dnn = best(lambda: F.conv2d(x, w, b, stride=s, padding=pad), runs)
            t_gemm = best(lambda: conv2d_gemm(x, w, b, (s, s), (pad, pad)), runs)
        ratio = w.numel() / (2 * out_side * out_side)
        chosen = "GEMM" if gemm_pays(w, 2, out_side, out_side) else "oneDNN"
        winner = "GEMM" if t_gemm < t_dnn else "oneDNN"
        print(f"{cin:>5} {cout:>5} {k} {s} {side:>4} {ratio:>7.0f}  {t_dnn * 1e3:>9.2f} {t_gemm * 1e3:>8.2f}  "
              f"{winner:>6}  {chosen}{'' if chosen == winner else '  (differs)'}")


def forward_ab(unet: UNetModel, size: int, dtype: torch.dtype, runs: int) -> None:
    unet = unet.to(dtype)
    side = size // 8
    x = torch.randn(2, 4, side, side, dtype=dtype)
    t = torch.tensor([500.0, 500.0])
    ctx = torch.randn(2, 77, 768, dtype=dtype)
    floor = cpu_kernels.GEMM_MIN_WEIGHT
    times = {"oneDNN only": [], "GEMM path": []}
    with torch.inference_mode():
        unet(x, t, ctx)
        for _ in range(runs):
            for name, min_weight in (("oneDNN only", 1 << 62), ("GEMM path", floor)):
                cpu_kernels.GEMM_MIN_WEIGHT = min_weight
                t0 = time.perf_counter()
                unet(x, t, ctx)
                times[name].append(time.perf_counter() - t0)
    cpu_kernels.GEMM_MIN_WEIGHT = floor
    base, new = (statistics.median(times[k]) for k in times)
    print(f"UNet forward {size}x{size} batch 2 {str(dtype)[6:]}: oneDNN only {base:.3f} s, "
          f"GEMM path {new:.3f} s, ratio {new / base:.2f}x (medians of {runs}, alternating)")


def profile_table(unet: UNetModel, size: int, dtype: torch.dtype, rows: int = 15) -> None:
    from torch.profiler import ProfilerActivity, profile

    unet = unet.to(dtype)
    side = size // 8
    args = (torch.randn(2, 4, side, side, dtype=dtype), torch.tensor([500.0, 500.0]),
            torch.randn(2, 77, 768, dtype=dtype))
    with torch.inference_mode():
        unet(*args)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            unet(*args)
    print(f"\n== per-op time of one {size}x{size} batch-2 forward, {str(dtype)[6:]} ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--shapes-only", action="store_true", help="skip the full-size UNet forward")
    parser.add_argument("--profile", action="store_true", help="print the per-op table of one forward per dtype")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    with torch.device("meta"):
        meta = UNetModel(UNetConfig.sd15())
    shapes = conv_shapes(meta, args.size)
    for name in args.dtypes.split(","):
        print(f"\n== {name}: every convolution shape of SD1.5 at {args.size}x{args.size}, batch 2 ==", end="")
        shape_table(shapes, DTYPES[name], args.runs)
    if args.shapes_only:
        return
    torch.manual_seed(0)
    unet = UNetModel(UNetConfig.sd15()).eval().requires_grad_(False)
    print()
    for name in args.dtypes.split(","):
        forward_ab(unet, args.size, DTYPES[name], args.runs)
    if args.profile:
        for name in args.dtypes.split(","):
            profile_table(unet, args.size, DTYPES[name])


if __name__ == "__main__":
    main()
