"""Sampling overhead on a full-size SD1.5-architecture random checkpoint: 256x256, euler,
4 steps, cfg 7, CPU fp32, through the real KSampler node. Prints seconds per step and the
share of the sampling time spent outside UNet calls (sampler maths, CFG, conditioning,
noise, previews) — goal: under 3%.

    python bench/sampling.py [--ckpt PATH] [--size 256] [--steps 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry, create_services

CACHE = Path(__file__).resolve().parent / ".cache"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=CACHE / "sd15_full_fp16.safetensors")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not args.ckpt.exists():
        from latentgraph.models.make import make_checkpoint

        print(f"writing {args.ckpt} (full-size SD1.5 architecture, random weights) ...", flush=True)
        make_checkpoint(args.ckpt, "sd15", "full", seed=0, dtype="fp16")
    models = CACHE / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = models / "checkpoints" / args.ckpt.name
    if not link.exists():
        link.symlink_to(args.ckpt.resolve())

    env = Environment(output_dir=CACHE / "out", input_dir=CACHE / "in", temp_dir=CACHE / "tmp", models_dir=models,
                      device="cpu", dtype="fp32")
    ex = Executor(create_registry(), env, services=create_services(env))
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=args.ckpt.name)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a photograph of an astronaut riding a horse")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("latent", "EmptyLatentImage", width=args.size, height=args.size, batch_size=1)
    wf.add("k", "KSampler", model=ck.MODEL, seed=0, steps=args.steps, cfg=7.0, sampler_name=args.sampler,
           scheduler="normal", positive="pos", negative="neg", latent_image="latent", denoise=1.0)
    start = time.perf_counter()
    ex.run(wf, targets=["pos", "neg"])
    print(f"load + encode prompts: {time.perf_counter() - start:.2f} s (not part of the figures below)")

    unet = ex.run(wf, targets=["ckpt"]).get("ckpt", 0).unet
    spent = []
    handles = [unet.register_forward_pre_hook(lambda m, a: spent.append(-time.perf_counter())),
               unet.register_forward_hook(lambda m, a, o: spent.append(time.perf_counter()))]
    totals, unet_times = [], []
    try:
        for run in range(args.runs + 1):  # the first is a warm-up
            wf.set("k.seed", run + 1)
            spent.clear()
            res = ex.run(wf, targets=["k"])
            if run == 0:
                continue
            totals.append(res.timings["k"])
            unet_times.append(sum(spent))
    finally:
        for h in handles:
            h.remove()
    total, in_unet = statistics.median(totals), statistics.median(unet_times)
    calls = args.steps  # euler: one guided call per step (cond and uncond batched)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.size}x{args.size}, "
          f"{args.sampler}, {args.steps} steps, cfg 7, fp32 CPU (median of {args.runs})")
    print(f"KSampler node: {total:.3f} s = {total / args.steps:.3f} s/step; UNet calls: {in_unet:.3f} s "
          f"({calls} calls of batch 2, {in_unet / calls:.3f} s each)")
    overhead = total - in_unet
    print(f"outside the UNet: {overhead * 1e3:.1f} ms = {100 * overhead / total:.2f}% of the sampling time "
          f"(goal < 3%: {'met' if overhead / total < 0.03 else 'NOT met'})")


if __name__ == "__main__":
    main()
