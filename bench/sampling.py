"""Sampling overhead on a full-size SD1.5-architecture random checkpoint: 256x256, euler,
4 steps, cfg 7, CPU fp32, through the real KSampler node. Prints seconds per step and the
share of the sampling time spent outside UNet calls (sampler maths, CFG, conditioning,
noise, previews) — goal: under 3%.

Side by side in the same run it samples the same model cloned with a no-op patch at every
point of the patch layer (each transformer patch, attn1/attn2 replacements calling the default
attention, block patches, model_function_wrapper, cfg/pre/post functions): the no-patch
figure is the unpatched code path; the ratio bounds what the layer costs once used.

    python bench/sampling.py [--ckpt PATH] [--model full|tiny] [--size 256] [--steps 4] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from typing import Annotated

import torch

from latentgraph.graph import MODEL, Environment, Executor, Workflow, node
from latentgraph.models.unet import attention
from latentgraph.nodes import create_registry, create_services

CACHE = Path(__file__).resolve().parent / ".cache"


def _noop_attn(q, k, v, extra):
    return attention(q, k, v, extra["n_heads"])


@node(category="bench", outputs=[MODEL])
def BenchNoopPatches(model: Annotated[object, MODEL]) -> object:
    """The model with a no-op patch at every point of the patch layer."""
    m = model.clone()
    for name in ("attn1_patch", "attn2_patch"):
        m.set_model_patch(lambda n, c, v, extra: (n, c, v), name)
    for name in ("attn1_output_patch", "attn2_output_patch", "middle_patch"):
        m.set_model_patch(lambda n, extra: n, name)
    m.set_model_input_block_patch(lambda h, to: h)
    m.set_model_input_block_patch_after_skip(lambda h, to: h)
    m.set_model_output_block_patch(lambda h, hsp, to: (h, hsp))
    for block, n in [("input", i) for i in range(12)] + [("middle", 0)] + [("output", i) for i in range(12)]:
        m.set_model_attn1_replace(_noop_attn, block, n)
        m.set_model_attn2_replace(_noop_attn, block, n)
    m.set_model_unet_function_wrapper(lambda apply_model, a: apply_model(a["input"], a["timestep"], **a["c"]))
    m.set_model_sampler_cfg_function(lambda a: a["uncond"] + (a["cond"] - a["uncond"]) * a["cond_scale"])
    m.set_model_sampler_pre_cfg_function(lambda a: a["conds_out"])
    m.set_model_sampler_post_cfg_function(lambda a: a["denoised"])
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=None, help="default: a random checkpoint of --model")
    parser.add_argument("--model", choices=["full", "tiny"], default="full",
                        help="size of the random SD1.5 checkpoint written when --ckpt is not given")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.ckpt is None:
        args.ckpt = CACHE / f"sd15_{args.model}_fp16.safetensors"
    if not args.ckpt.exists():
        from latentgraph.models.make import make_checkpoint

        print(f"writing {args.ckpt} ({args.model}-size SD1.5 architecture, random weights) ...", flush=True)
        make_checkpoint(args.ckpt, "sd15", args.model, seed=0, dtype="fp16")
    models = CACHE / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    link = models / "checkpoints" / args.ckpt.name
    if not link.exists():
        link.symlink_to(args.ckpt.resolve())

    env = Environment(output_dir=CACHE / "out", input_dir=CACHE / "in", temp_dir=CACHE / "tmp", models_dir=models,
                      device="cpu", dtype="fp32")
    registry = create_registry()
    registry.register(BenchNoopPatches, source="bench")
    ex = Executor(registry, env, services=create_services(env))
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=args.ckpt.name)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a photograph of an astronaut riding a horse")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("latent", "EmptyLatentImage", width=args.size, height=args.size, batch_size=1)
    wf.add("k", "KSampler", model=ck.MODEL, seed=0, steps=args.steps, cfg=7.0, sampler_name=args.sampler,
           scheduler="normal", positive="pos", negative="neg", latent_image="latent", denoise=1.0)
    wf.add("noop", "BenchNoopPatches", model=ck.MODEL)
    wf.add("kp", "KSampler", model="noop", seed=0, steps=args.steps, cfg=7.0, sampler_name=args.sampler,
           scheduler="normal", positive="pos", negative="neg", latent_image="latent", denoise=1.0)
    start = time.perf_counter()
    ex.run(wf, targets=["pos", "neg"])
    print(f"load + encode prompts: {time.perf_counter() - start:.2f} s (not part of the figures below)")

    unet = ex.run(wf, targets=["ckpt"]).get("ckpt", 0).unet
    spent = []
    handles = [unet.register_forward_pre_hook(lambda m, a: spent.append(-time.perf_counter())),
               unet.register_forward_hook(lambda m, a, o: spent.append(time.perf_counter()))]
    totals, unet_times, patched = [], [], []
    try:
        for run in range(args.runs + 1):  # the first is a warm-up
            for target in ("k", "kp"):  # alternated, so both see the same machine load
                wf.set(f"{target}.seed", run + 1)
                spent.clear()
                res = ex.run(wf, targets=[target])
                if run == 0:
                    continue
                if target == "k":
                    totals.append(res.timings["k"])
                    unet_times.append(sum(spent))
                else:
                    patched.append(res.timings["kp"])
                    plain = ex.run(wf, targets=["k"]).get("k", 0)["samples"]  # cached: same seed
                    diff = float((res.get("kp", 0)["samples"] - plain).abs().max())
    finally:
        for h in handles:
            h.remove()
    total, in_unet = statistics.median(totals), statistics.median(unet_times)
    calls = args.steps  # euler: one guided call per step (cond and uncond batched)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.ckpt.name}, {args.size}x{args.size}, "
          f"{args.sampler}, {args.steps} steps, cfg 7, fp32 CPU (median of {args.runs})")
    print(f"KSampler node: {total:.3f} s = {total / args.steps:.3f} s/step; UNet calls: {in_unet:.3f} s "
          f"({calls} calls of batch 2, {in_unet / calls:.3f} s each)")
    overhead = total - in_unet
    print(f"outside the UNet: {overhead * 1e3:.1f} ms = {100 * overhead / total:.2f}% of the sampling time "
          f"(goal < 3%: {'met' if overhead / total < 0.03 else 'NOT met'})")
    with_patches = statistics.median(patched)
    print(f"patch layer: no patches {total:.3f} s, a no-op patch at every point {with_patches:.3f} s "
          f"(ratio {with_patches / total:.3f}); latents differ by at most {diff:.1e} "
          "(the cfg function's x - (x - ...) rounding)")


if __name__ == "__main__":
    main()
