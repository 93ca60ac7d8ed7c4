"""CPU memory of latentgraph (issue 17): peak and resident set, each figure from a fresh process.

    python bench/memory.py [--checkpoint FILE] [--prompts 50] [--size 256] [--steps 4]

Prints, in GiB of RSS (/proc/self/status VmRSS, peak VmHWM):
  import      the post-import baseline (latentgraph, its nodes, torch, transformers)
  load        load_checkpoint in fp32 the old way (every tensor read, then all converted while
              the file's pages are mapped) and the new way (streamed, models/cast.py), with the
              theoretical figures beside them; the load's seconds in a second process (page
              cache warm) beside the 1.5 s goal
  txt2img     one SIZE² STEPS-step euler prompt through the executor: its peak, then the RSS
              after a /free (models and results dropped, release_memory) against the baseline
              and against a warm baseline (after a tiny prompt and a /free)
  alternate   PROMPTS prompts alternating two small checkpoints, each prompt loading its model
              afresh (caches dropped between prompts, as an evicting cache would): RSS per prompt
              and the growth from the second prompt to the last
Figures, not assertions: the machine is shared, timings are noisy (take several runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_comfyui import workflow  # noqa: E402  (bench/ is not a package)

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph-bench"
FULL = CACHE / "sd15_full_seed0.safetensors"
GIB = 1 << 30


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux >= 4.0), so a phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def figures(**extra) -> dict:
    return {"rss": status_bytes("VmRSS"), "hwm": status_bytes("VmHWM"), **extra}


# -- the children (each a fresh process) -------------------------------------------------------
def _imports():
    import torch  # noqa: F401

    from latentgraph.graph import Environment, Executor  # noqa: F401
    from latentgraph.models import checkpoint  # noqa: F401
    from latentgraph.nodes import create_registry

    return create_registry()


def _old_strict_load(module, sd, what, source, dtype, file_key=str, linear_as_conv=False, held=None):
    """strict_load as it was before streaming: every tensor converted at once, while the
    caller's dict (views of the file's mapping) keeps the file's pages mapped."""
    from latentgraph.models.checkpoint import check_shapes

    check_shapes(module, sd, what, source, file_key, linear_as_conv)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    module.load_state_dict(sd, strict=False, assign=True)


def child_import(args) -> dict:
    _imports()
    return figures()


def child_load(args) -> dict:
    import torch

    _imports()
    from latentgraph.models import checkpoint

    if args.way == "old":
        checkpoint.strict_load = _old_strict_load
    # "held": what load_placed does on the CPU (text encoders and VAE kept in the file's fp16)
    hold = checkpoint.HELD_ROLES if args.way == "held" else ()
    base = status_bytes("VmRSS")
    reset_peak()
    start = time.perf_counter()
    ck = checkpoint.load_checkpoint(args.checkpoint, dtypes={r: torch.float32 for r in ("unet", "vae", "text")},
                                    hold=hold)
    seconds = time.perf_counter() - start
    modules = [ck.unet, ck.vae, *ck.text.values()]
    weights = sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])
    return figures(base=base, seconds=seconds, weights=weights, file=Path(args.checkpoint).stat().st_size)


def _workflow(ckpt: str, size: int, steps: int, seed: int) -> dict:
    """compare_comfyui's txt2img graph (ComfyUI's default), euler, cfg 7."""
    return workflow(ckpt, size, steps, 7.0, "euler", seed)


def _executor(registry, models: Path, out: Path):
    from latentgraph.graph import Environment, Executor
    from latentgraph.nodes import create_services

    env = Environment(models_dir=models, output_dir=out, input_dir=out, temp_dir=out, device="cpu", dtype="fp32")
    return Executor(registry, env, services=create_services(env))


def _free(executor) -> None:
    """What POST /free {"unload_models": true, "free_memory": true} does."""
    executor.services["models"].clear()
    executor.release()


def child_txt2img(args) -> dict:
    """The full prompt's peak; the RSS after /free against the post-import baseline and against
    a warm one (after a tiny prompt and /free: what lazy imports and one-time set-ups cost)."""
    registry = _imports()
    base, anon_base = status_bytes("VmRSS"), status_bytes("RssAnon")
    with tempfile.TemporaryDirectory() as tmp:
        models = _models(Path(tmp), args)
        (models / "checkpoints" / "full.safetensors").symlink_to(Path(args.checkpoint).resolve())
        ex = _executor(registry, models, Path(tmp) / "out")
        ex.run(_workflow("a.safetensors", 64, 2, 1))
        _free(ex)
        warm = status_bytes("VmRSS")
        reset_peak()
        start = time.perf_counter()
        ex.run(_workflow("full.safetensors", args.size, args.steps, 1))
        seconds = time.perf_counter() - start
        peak = status_bytes("VmHWM")
        _free(ex)
        return figures(base=base, warm=warm, peak=peak, seconds=seconds, after_free=status_bytes("VmRSS"),
                       anon_base=anon_base, anon_after=status_bytes("RssAnon"))


def _models(tmp: Path, args) -> Path:
    """A models folder in ``tmp`` whose checkpoints/ links to the tiny files of ``args.tiny``."""
    models = tmp / "models"
    (models / "checkpoints").mkdir(parents=True)
    for name in TINY:
        (models / "checkpoints" / name).symlink_to(Path(args.tiny, name).resolve())
    return models


TINY = ("a.safetensors", "b.safetensors")


def child_make(args) -> dict:
    """Write the tiny checkpoints into ``args.tiny``. A process of its own: building random
    networks imports transformers (their reference initialisation), which a prompt never does,
    so the measuring children only read the files."""
    from latentgraph.models.make import make_checkpoint

    for seed, name in enumerate(TINY):
        make_checkpoint(Path(args.tiny, name), family="sd15", seed=seed, dtype="fp16")  # converted on load
    return {}


def child_alternate(args) -> dict:
    registry = _imports()
    with tempfile.TemporaryDirectory() as tmp:
        ex = _executor(registry, _models(Path(tmp), args), Path(tmp) / "out")
        base = status_bytes("VmRSS")
        per_prompt = []
        for i in range(args.prompts):
            ex.run(_workflow(TINY[i % 2], 64, 2, i))
            _free(ex)  # the next prompt loads its checkpoint again: a switch every prompt
            per_prompt.append(status_bytes("VmRSS"))
        return figures(base=base, per_prompt=per_prompt)


CHILDREN = {"make": child_make, "import": child_import, "load": child_load, "txt2img": child_txt2img, "alternate": child_alternate}


def spawn(what: str, args, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--checkpoint", str(args.checkpoint), "--size", str(args.size),
           "--steps", str(args.steps), "--prompts", str(args.prompts), "--tiny", str(args.tiny), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"bench/memory.py: child {what} {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def report(args) -> None:
    imp = spawn("import", args)
    print(f"import baseline           RSS {gib(imp['rss'])} GiB (peak {gib(imp['hwm'])})")
    loads = {way: spawn("load", args, "--way", way) for way in ("old", "new", "held")}
    second = spawn("load", args, "--way", "held")
    w, f = loads["new"]["weights"], loads["new"]["file"]
    print(f"load fp32 ({gib(f)} GiB file, {gib(w)} GiB of fp32 weights); peak above the pre-load RSS:")
    for way, r in loads.items():
        print(f"  {way:5s} way  peak {gib(r['hwm'])} GiB (+{gib(r['hwm'] - r['base'])}), after {gib(r['rss'])} GiB, "
              f"{r['seconds']:.2f} s")
    print(f"  theory: old = weights + file pages = +{gib(w + f)}; new = weights + one tensor = +{gib(w)}; "
          f"held = the same less half the text encoders' and VAE's layers = +{gib(loads['held']['weights'])}")
    grew = {way: r["hwm"] - r["base"] for way, r in loads.items()}
    print(f"  peak above baseline, new/old {grew['new'] / grew['old']:.2f}, held/old {grew['held'] / grew['old']:.2f}")
    print(f"  second process load, held (page cache warm): {second['seconds']:.2f} s (goal <= 1.5 s)")
    run = spawn("txt2img", args)
    print(f"txt2img {args.size}² {args.steps} steps (fp32): peak {gib(run['peak'])} GiB (goal <= 4.8), "
          f"{run['seconds']:.1f} s")
    print(f"  after /free {gib(run['after_free'])} GiB = {run['after_free'] / run['base']:.2f}x the post-import "
          f"{gib(run['base'])} GiB (goal <= 1.10x), {run['after_free'] / run['warm']:.2f}x the warm "
          f"{gib(run['warm'])} GiB (after a tiny prompt and /free: lazy imports, kernels' one-time set-up)")
    print(f"  of which private (RssAnon): {gib(run['anon_after'])} GiB = {run['anon_after'] / run['anon_base']:.2f}x "
          f"the post-import {gib(run['anon_base'])} GiB; the rest is shared library code paged in by running "
          f"(libtorch_cpu's kernels)")
    alt = spawn("alternate", args)
    rss = alt["per_prompt"]
    print(f"{args.prompts} prompts alternating two tiny checkpoints (reloaded each prompt), RSS in MiB after each:")
    print("  " + " ".join(f"{r / (1 << 20):.0f}" for r in rss))
    if len(rss) > 2:
        print(f"  growth from prompt 2 to {len(rss)}: {(rss[-1] - rss[1]) / (1 << 20):+.1f} MiB "
              f"({rss[-1] / rss[1]:.3f}x); post-import baseline {alt['base'] / (1 << 20):.0f} MiB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=FULL, help="a full-size SD1.5 file (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--tiny", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--way", choices=("old", "new", "held"), default="new", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0
    if not args.checkpoint.is_file():
        raise SystemExit(f"bench/memory.py: {args.checkpoint}: no such file (bench/compare_comfyui.py makes it)")
    with tempfile.TemporaryDirectory() as tiny:
        args.tiny = Path(tiny)
        spawn("make", args)
        report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
