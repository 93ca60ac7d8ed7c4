"""Model stack figures on a full-size SD1.5-architecture random checkpoint (written once by
make-checkpoint): load time and peak RSS, and UNet seconds per call for a CFG batch of 2.

Each load runs in a fresh process so peak RSS is its own. Side by side in one run:
  load:  latentgraph's loader (meta-device build, tensors assigned, no init) into fp32, and in the
         file's own dtype (memory-mapped, no copy)  vs  the naive way (build with random init,
         safetensors.load_file, load_state_dict) into fp32, on the same file
  UNet:  contiguous (NCHW) vs channels_last input and weights, fp32, at 256x256 and 512x512

    python bench/models.py [--ckpt PATH] [--sizes 256 512] [--calls 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

CACHE = Path(__file__).resolve().parent / ".cache"

LOADERS = {
    "latentgraph": """
from latentgraph.models.checkpoint import load_checkpoint
ck = load_checkpoint(PATH, dtypes={"unet": torch.float32, "vae": torch.float32, "text": torch.float32})
""",
    "latentgraph-filedtype": """
from latentgraph.models.checkpoint import load_checkpoint
ck = load_checkpoint(PATH)  # tensors stay in the file's dtype: mmap'd, no copy
""",
    "naive": """
from safetensors.torch import load_file
from latentgraph.models.checkpoint import build_text_encoders, split_state_dict, detect_architecture
from latentgraph.models.unet import UNetModel
from latentgraph.models.vae import AutoencoderKL
sd = load_file(PATH)
arch = detect_architecture(sd)
parts = split_state_dict(sd, arch)
unet, vae, text = UNetModel(arch.unet), AutoencoderKL(arch.vae), build_text_encoders(arch)
unet.load_state_dict(parts["unet"]); vae.load_state_dict(parts["vae"])
for n, e in text.items():
    e.load_state_dict(parts["text." + n])
del sd, parts
""",
}


def measure_load(kind: str, path: Path) -> dict:
    code = ("import resource, time, torch\nPATH = %r\nt = time.perf_counter()\n" % str(path)
            + LOADERS[kind]
            + "\nimport json\nprint(json.dumps({'seconds': time.perf_counter() - t, "
              "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_unet(unet, size: int, calls: int, channels_last: bool) -> float:
    p = next(unet.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g).to(p.device, p.dtype)
    context = torch.randn(2, 77, 768, generator=g).to(p.device, p.dtype)
    t = torch.tensor([999.0, 999.0], device=p.device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if p.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        unet(x, t, context)  # warm-up
        sync()
        for _ in range(calls):
            start = time.perf_counter()
            unet(x, t, context)
            sync()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=CACHE / "sd15_full_fp16.safetensors")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where the UNet runs (cpu, cuda)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if not args.ckpt.exists():
        from latentgraph.models.make import make_checkpoint

        print(f"writing {args.ckpt} (full-size SD1.5 architecture, random weights, fp16) ...", flush=True)
        start = time.perf_counter()
        make_checkpoint(args.ckpt, "sd15", "full", seed=0, dtype="fp16")
        print(f"  {args.ckpt.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(f"checkpoint: {args.ckpt} ({args.ckpt.stat().st_size / 1e9:.2f} GB), loaded as fp32")
    loads = {kind: measure_load(kind, args.ckpt) for kind in LOADERS}
    for kind, r in loads.items():
        print(f"load  {kind:22s} {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB")
    ours, naive = loads["latentgraph"], loads["naive"]
    print(f"load  ratio naive/latentgraph: time {naive['seconds'] / ours['seconds']:.2f}x, "
          f"peak RSS {naive['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x")

    from latentgraph.models.checkpoint import load_checkpoint
    from latentgraph.models.management import DTYPES

    dtype = DTYPES[args.dtype]
    start = time.perf_counter()
    unet = load_checkpoint(args.ckpt, dtypes={"unet": dtype}, parts=("unet",)).unet.to(args.device)
    print(f"UNet  loaded to {args.device} in {args.dtype} in {time.perf_counter() - start:.2f} s")
    for size in args.sizes:
        plain = time_unet(unet.to(memory_format=torch.contiguous_format), size, args.calls, False)
        last = time_unet(unet.to(memory_format=torch.channels_last), size, args.calls, True)
        print(f"UNet  {size}x{size} CFG batch 2, {args.dtype} on {args.device}: contiguous {plain:7.3f} s/call, "
              f"channels_last {last:7.3f} s/call  (contiguous/channels_last {plain / last:.2f}x)")


if __name__ == "__main__":
    main()
