"""GPU speed and memory (issue 17): SD1.5 512² and SDXL 1024², 20 steps, batch 1, fp16, eager,
each with the automatic VRAM budget and with a tight --vram-budget, side by side in one process.

Per family and setting it prints the KSampler's it/s (best of --runs after one warm-up run),
the peak VRAM torch's allocator saw (max_memory_allocated) during the whole prompt, and the
ratios of the budgeted run to the automatic one, plus the PSNR between their images (the same
seed: a budget must not change the picture). Checkpoints are random-weight files of the
published layouts, written once into the cache folder (SD1.5 2.1 GB, SDXL 6.9 GB in fp16).

Without a CUDA device (or with --dry-run) it says so and does a CPU dry run of the same code
path on the shipped demo model at 64², 4 steps: the budget then runs on the simulated device
(models/vram.FakeDevice) and "peak VRAM" is the simulated device's booked peak. Those figures
say nothing about a GPU; they show the script runs end to end.

    python bench/gpu.py [--families sd15,sdxl] [--steps 20] [--runs 2] [--budget-sd15 2 --budget-sdxl 6]
    python bench/gpu.py --dry-run
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from latentgraph.graph import Environment, Executor  # noqa: E402
from latentgraph.models.vram import fmt_bytes  # noqa: E402
from compare_comfyui import workflow as txt2img  # noqa: E402  (bench/ is not a package)
from latentgraph.nodes import create_registry, create_services  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph-bench"
DEMO = "latentgraph-shapes.safetensors"
SIZES = {"sd15": 512, "sdxl": 1024}


def workflow(ckpt: str, size: int, steps: int, seed: int = 7) -> dict:
    """compare_comfyui's txt2img graph (ComfyUI's default, euler, cfg 7) with a PreviewImage
    at the end; node "5" is the KSampler."""
    wf = txt2img(ckpt, size, steps, 7.0, "euler", seed)
    wf["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    return wf


def checkpoint(family: str) -> Path:
    """A random full-size fp16 checkpoint of ``family`` in the cache folder (made once)."""
    from latentgraph.models.make import make_checkpoint

    path = CACHE / f"{family}_full_seed0_fp16.safetensors"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} (once) ...", flush=True)
        tmp = path.with_suffix(".tmp")
        make_checkpoint(tmp, family, size="full", seed=0, dtype="fp16")
        tmp.rename(path)
    return path


def run_once(folder: Path | None, ckpt: str, device: str, budget, size: int, steps: int) -> dict:
    """One prompt in a fresh executor and services (so nothing stays loaded from the last);
    ``folder``: an extra checkpoints folder (the shipped demo model needs none)."""
    scratch = Path(tempfile.mkdtemp(prefix="latentgraph-gpu-bench-"))
    env = Environment(output_dir=scratch / "output", temp_dir=scratch / "temp", models_dir=scratch / "models",
                      model_dirs={"checkpoints": [folder]} if folder else {}, device=device, dtype="fp16" if device == "cuda" else "fp32",
                      vram_budget=budget)
    services = create_services(env)
    memory = services["placement"].memory
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = Executor(create_registry(), env, services=services).run(workflow(ckpt, size, steps),
                                                                      targets=["6"])
    wall = time.perf_counter() - start
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = memory.device.peak if memory is not None else 0
    image = result.get("6").float().numpy()
    streamed = sum(e.partial_loads for e in memory._entries.values()) if memory is not None else 0
    out = {"its": steps / result.timings["5"], "peak": peak, "wall": wall, "image": image,
           "budget": memory.budget if memory is not None else 0, "splits": streamed}
    del result, services, memory
    shutil.rmtree(scratch, ignore_errors=True)
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def bench_family(label: str, folder: Path | None, ckpt: str, device: str, size: int, steps: int, runs: int,
                 budget: float) -> None:
    settings = {"auto": None, f"--vram-budget {budget:g}": budget}
    run_once(folder, ckpt, device, None, size, steps)  # warm-up: kernels, allocator, file cache
    best: dict[str, dict] = {}
    for _ in range(runs):  # alternating, so drift hits both settings alike
        for name, value in settings.items():
            r = run_once(folder, ckpt, device, value, size, steps)
            if name not in best or r["its"] > best[name]["its"]:
                best[name] = r
    print(f"\n{label}: {size}x{size}, {steps} steps, batch 1, euler, cfg 7, best of {runs}")
    print(f"  {'setting':<22} {'it/s':>8} {'peak VRAM':>12} {'budget':>12} {'splits':>7} {'wall s':>8}")
    for name, r in best.items():
        budget_text = fmt_bytes(r["budget"]) if r["budget"] else "none"
        peak_text = fmt_bytes(r["peak"]) if r["peak"] else "n/a"
        print(f"  {name:<22} {r['its']:8.2f} {peak_text:>12} {budget_text:>12} {r['splits']:7d} {r['wall']:8.2f}")
    auto, tight = best["auto"], best[f"--vram-budget {budget:g}"]
    peak_ratio = f"{tight['peak'] / auto['peak']:.2f}x" if auto["peak"] else "n/a (no device in the auto run)"
    print(f"  budgeted / auto: it/s {tight['its'] / auto['its']:.2f}x, peak VRAM {peak_ratio}, "
          f"PSNR {psnr(tight['image'], auto['image']):.1f} dB (splits: models loaded in part)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=2, help="runs per setting after the warm-up (best kept)")
    p.add_argument("--budget-sd15", type=float, default=2.0, help="GiB for SD1.5's budgeted run (default 2)")
    p.add_argument("--budget-sdxl", type=float, default=6.0, help="GiB for SDXL's budgeted run (default 6)")
    p.add_argument("--dry-run", action="store_true", help="a CPU run of the code path on the demo model")
    args = p.parse_args(argv)
    print(f"torch {torch.__version__}")
    if args.dry_run or not torch.cuda.is_available():
        if not args.dry_run:
            print("no CUDA device: a CPU dry run at tiny size instead (the figures say nothing about a GPU)")
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
        # the demo's fp32 UNet is 16 MiB: 0.016 GiB splits it, as the tight budgets split a GPU's
        bench_family("dry run (demo model, CPU, simulated device)", None, DEMO, "cpu", 64,
                     min(args.steps, 4), 1, 0.016)
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, "
          f"{torch.cuda.get_device_properties(0).total_memory / (1 << 30):.1f} GiB")
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        if family not in SIZES:
            p.error(f"unknown family {family!r}: choose sd15 and/or sdxl")
        path = checkpoint(family)
        budget = args.budget_sd15 if family == "sd15" else args.budget_sdxl
        bench_family(family, path.parent, path.name, "cuda", SIZES[family],
                     args.steps, args.runs, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
