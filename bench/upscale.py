"""Upscale-model tiling: a 4x ESRGAN (tiny random by default, --full for the published size: 64
features, 23 RRDB blocks) on a 512 x 512 image -> 2048 x 2048, with ComfyUI's defaults (tile 512,
overlap 32: one tile for this image) against smaller tiles, including the tile latentgraph picks
from a memory budget (--budget-gib, default: the node's budget on this device). Each setting runs
in a fresh process, so its peak RSS is its own. Prints wall time, peak RSS above the process's
state after loading (model and input made), tiles run, and ratios against ComfyUI's defaults.

    .venv/bin/python bench/upscale.py [--full] [--size 512] [--budget-gib 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
    """One setting in this process: load, upscale once, print a JSON line."""
    import torch

    from latentgraph.models.upscale import load_upscale_state_dict, make_tiny_upscale_state_dict, tile_steps, upscale_image

    torch.manual_seed(0)
    if args.full:
        from spandrel.architectures.ESRGAN import ESRGAN
        sd = ESRGAN(num_filters=64, num_blocks=23, scale=4).state_dict()
    else:
        sd = make_tiny_upscale_state_dict("esrgan", 0)
    device = torch.device(args.device)
    desc = load_upscale_state_dict(sd, "bench").to(device)
    image = torch.rand(1, args.size, args.size, 3, generator=torch.Generator().manual_seed(1))
    base = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = upscale_image(desc, image, device, tile=args.child, overlap=32)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    print(json.dumps({"tile": args.child, "seconds": seconds, "rss_mib": _rss_mib() - base, "gpu_mib": gpu,
                      "tiles": tile_steps(args.size, args.size, args.child, 32), "shape": list(out.shape),
                      "mean": float(out.mean())}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the published ESRGAN size (slow on a CPU)")
    parser.add_argument("--size", type=int, default=512, help="input side (output is 4x)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--budget-gib", type=float, default=None,
                        help="memory budget for latentgraph's tile (default: the node's on this device)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return 0

    import torch

    from latentgraph.models.upscale import pick_tile
    from latentgraph.nodes.upscale import memory_budget

    budget = int(args.budget_gib * 2**30) if args.budget_gib else memory_budget(torch.device(args.device))
    ours = pick_tile(4, budget)
    settings = [("ComfyUI default", 512), (f"latentgraph (budget {budget / 2**30:.1f} GiB)", ours),
                ("tile 256", 256), ("tile 128", 128)]
    rows = []
    for label, tile in settings:
        cmd = [sys.executable, __file__, "--child", str(tile), "--size", str(args.size), "--device", args.device]
        cmd += ["--full"] if args.full else []
        line = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.strip().splitlines()[-1]
        rows.append((label, json.loads(line)))
    ref = rows[0][1]
    model = "ESRGAN 4x full size (64 features, 23 blocks)" if args.full else "tiny ESRGAN 4x (8 features, 1 block)"
    print(f"{model}, {args.size}x{args.size} -> {4 * args.size}x{4 * args.size}, overlap 32, device {args.device}")
    print(f"{'setting':34s} {'tile':>5s} {'tiles':>5s} {'time s':>8s} {'x default':>9s} {'peak RSS MiB':>12s} "
          f"{'x default':>9s} {'GPU MiB':>8s} {'mean':>8s}")
    for label, r in rows:
        print(f"{label:34s} {r['tile']:5d} {r['tiles']:5d} {r['seconds']:8.2f} {r['seconds'] / ref['seconds']:9.2f} "
              f"{r['rss_mib']:12.0f} {r['rss_mib'] / max(ref['rss_mib'], 1):9.2f} {r['gpu_mib']:8.0f} {r['mean']:8.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
