"""The approximate speed-ups (EasyCache, LazyCache, TomePatchModel) against the same KSampler run
without them, side by side in one process: KSampler seconds (median over --runs, the
configurations alternated so each sees the same machine load), the UNet calls made, and the PSNR
of the decoded picture against the node-less one (same seed; higher = closer, inf = identical).

Default: the full-size random SD1.5 checkpoint at 256x256, euler, 20 steps, cfg 7, CPU fp32.
Random weights make pictures of noise: the PSNR figures say how far each setting moves the
result, not how good it looks on a trained model.

    python bench/speed_patches.py [--ckpt PATH] [--model full|tiny] [--size 256] [--steps 20] [--runs 1]
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry, create_services

CACHE = Path(__file__).resolve().parent / ".cache"
FULL = Path("/root/.cache/latentgraph-bench/sd15_full_seed0.safetensors")
# name: (node, its inputs) — a few settings each; None is the baseline
CONFIGS = {
    "none": None,
    "EasyCache 0.2": ("EasyCache", {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95}),
    "EasyCache 0.5": ("EasyCache", {"reuse_threshold": 0.5, "start_percent": 0.15, "end_percent": 0.95}),
    "LazyCache 0.2": ("LazyCache", {"reuse_threshold": 0.2, "start_percent": 0.15, "end_percent": 0.95}),
    "LazyCache 0.5": ("LazyCache", {"reuse_threshold": 0.5, "start_percent": 0.15, "end_percent": 0.95}),
    "ToMe 0.3": ("TomePatchModel", {"ratio": 0.3}),
    "ToMe 0.6": ("TomePatchModel", {"ratio": 0.6}),
}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two IMAGE tensors in 0..1."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def build(ckpt: str, size: int, steps: int) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=ckpt)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a photograph of an astronaut riding a horse")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("latent", "EmptyLatentImage", width=size, height=size, batch_size=1)
    for i, (name, cfg) in enumerate(CONFIGS.items()):
        model = ck.MODEL
        if cfg is not None:
            wf.add(f"patch{i}", cfg[0], model=ck.MODEL, **cfg[1], **({"verbose": False} if "Cache" in cfg[0] else {}))
            model = f"patch{i}"
        wf.add(f"k{i}", "KSampler", model=model, seed=0, steps=steps, cfg=7.0, sampler_name="euler",
               scheduler="normal", positive="pos", negative="neg", latent_image="latent", denoise=1.0)
        wf.add(f"d{i}", "VAEDecode", samples=f"k{i}", vae=ck.VAE)
    return wf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=None, help=f"default: {FULL} (--model full) or a tiny one")
    parser.add_argument("--model", choices=["full", "tiny"], default="full")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    if args.ckpt is None:
        args.ckpt = FULL if args.model == "full" else CACHE / "sd15_tiny_fp16.safetensors"
    if not args.ckpt.exists():
        from latentgraph.models.make import make_checkpoint

        print(f"writing {args.ckpt} ({args.model}-size SD1.5 architecture, random weights) ...", flush=True)
        make_checkpoint(args.ckpt, "sd15", args.model, seed=0, dtype="fp16")
    models = CACHE / "models_speed"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = models / "checkpoints" / args.ckpt.name
    if not link.exists():
        link.symlink_to(args.ckpt.resolve())  # read in place, never copied
    env = Environment(output_dir=CACHE / "out", input_dir=CACHE / "in", temp_dir=CACHE / "tmp", models_dir=models,
                      device="cpu", dtype="fp32")
    ex = Executor(create_registry(), env, services=create_services(env))
    wf = build(args.ckpt.name, args.size, args.steps)
    ex.run(wf, targets=["pos", "neg"])
    unet = ex.run(wf, targets=["ckpt"]).get("ckpt", 0).unet
    calls = [0]
    hook = unet.register_forward_pre_hook(lambda m, a: calls.__setitem__(0, calls[0] + 1))
    wf.set("k0.seed", -1 % 2**32)  # a warm-up run, not counted (first-call allocations, oneDNN kernel choice)
    ex.run(wf, targets=["k0"])
    seconds = {name: [] for name in CONFIGS}
    made, images = {}, {}
    try:
        for run in range(args.runs):
            for i, name in enumerate(CONFIGS):  # alternated: every configuration once per round
                wf.set(f"k{i}.seed", run)
                calls[0] = 0
                res = ex.run(wf, targets=[f"k{i}"])
                seconds[name].append(res.timings[f"k{i}"])
                made[name] = calls[0]
                if run == 0:
                    images[name] = ex.run(wf, targets=[f"d{i}"]).get(f"d{i}", 0)
    finally:
        hook.remove()
    base = statistics.median(seconds["none"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.ckpt.name}, {args.size}x{args.size}, "
          f"euler, {args.steps} steps, cfg 7, fp32 CPU, median of {args.runs} (shared machine: noisy)")
    print(f"{'setting':<16}{'KSampler s':>12}{'speed-up':>10}{'UNet calls':>12}{'PSNR dB':>10}")
    for name in CONFIGS:
        t = statistics.median(seconds[name])
        print(f"{name:<16}{t:>12.2f}{base / t:>10.2f}{made[name]:>12d}{psnr(images[name], images['none']):>10.2f}")


if __name__ == "__main__":
    main()
