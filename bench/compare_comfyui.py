"""latentgraph against a ComfyUI checkout, side by side on one workflow and checkpoint (issue 17).

Each run is a fresh process on each side, one after the other: ComfyUI's server (started with
its own interpreter, spoken to over HTTP and the websocket only, never imported) in fp32 exact
mode, then `latentgraph run WORKFLOW --json`. Prints, per side, min-max over the runs of the cold
wall (ComfyUI: server start until /system_stats answers + the prompt), the KSampler node's
seconds and the process's peak RSS, the ratios latentgraph/ComfyUI, and the PSNR of
latentgraph's PNG against ComfyUI's. With --fast, a third process per run: latentgraph with
`--precision fast`, its KSampler speed-up over latentgraph's exact run and its PSNR against it.

    python bench/compare_comfyui.py --comfyui /work/oracle/ComfyUI [--size 256 --steps 4 --runs 2 --fast]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Made once and reused: a 2.1 GB random-weight SD1.5 file takes ~15 s to write.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "latentgraph-bench"
SAMPLER_ID = "5"
FP32_FLAGS = ["--cpu", "--force-fp32", "--fp32-unet", "--fp32-vae", "--fp32-text-enc"]


class BenchError(Exception):
    pass


def workflow(ckpt: str, size: int, steps: int, cfg: float, sampler: str, seed: int) -> dict:
    """The API-format prompt both sides run (ComfyUI's default txt2img graph)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle on a blue field", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        SAMPLER_ID: {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler, "scheduler": "normal",
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER_ID, 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm_gib(pid: int) -> float:
    """Peak resident set of a live process (VmHWM, in kB), read before it is killed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise BenchError(f"/proc/{pid}/status has no VmHWM line")


def log_tail(path: Path, n: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


async def _wait_ready(proc, base: str, log: Path, timeout: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"ComfyUI exited with {proc.returncode} before answering; log {log}:\n{log_tail(log)}")
            try:
                async with http.get(f"{base}/system_stats") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass  # not listening yet
            await asyncio.sleep(0.1)
    raise BenchError(f"ComfyUI did not answer /system_stats within {timeout:.0f} s; log {log}:\n{log_tail(log)}")


async def _queue_and_watch(base: str, prompt: dict) -> dict:
    """POST the prompt, follow its websocket `executing` messages to the end, fetch the PNG."""
    import aiohttp

    client = uuid.uuid4().hex
    marks: list[tuple[str | None, float]] = []
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{base.replace('http', 'ws', 1)}/ws?clientId={client}", max_msg_size=0) as ws:
            start = time.perf_counter()
            async with http.post(f"{base}/prompt", json={"prompt": prompt, "client_id": client}) as r:
                body = await r.json()
                if r.status != 200:
                    raise BenchError(f"ComfyUI refused the prompt: {json.dumps(body)[:2000]}")
            pid = body["prompt_id"]
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue  # binary previews
                event = json.loads(msg.data)
                data = event.get("data", {})
                if data.get("prompt_id") != pid:
                    continue
                if event["type"] == "execution_error":
                    raise BenchError(f"ComfyUI failed at node {data.get('node_id')} ({data.get('node_type')}): "
                                     f"{data.get('exception_message')}")
                if event["type"] == "executing":
                    marks.append((data.get("node"), time.perf_counter()))
                    if data.get("node") is None:
                        break
            wall = time.perf_counter() - start
        png = await _fetch_png(http, base, pid)
    return {"prompt_s": wall, "ksampler_s": _node_seconds(marks, SAMPLER_ID), "png": png}


def _node_seconds(marks: list, node: str) -> float:
    """A node runs from its `executing` message to the next one."""
    for (nid, t), (_, t_next) in zip(marks, marks[1:]):
        if nid == node:
            return t_next - t
    raise BenchError(f"ComfyUI sent no `executing` for node {node} (cached?); got {[m[0] for m in marks]}")


async def _fetch_png(http, base: str, pid: str) -> bytes:
    async with http.get(f"{base}/history/{pid}") as r:
        history = await r.json()
    images = history[pid]["outputs"]["7"]["images"]
    if len(images) != 1:
        raise BenchError(f"ComfyUI's SaveImage returned {len(images)} images, expected 1")
    async with http.get(f"{base}/view", params=images[0]) as r:
        if r.status != 200:
            raise BenchError(f"GET /view {images[0]}: HTTP {r.status}")
        return await r.read()


def comfy_run(args, scratch: Path, prompt: dict, i: int) -> dict:
    port = args.port or free_port()
    log = scratch / f"comfyui_{i}.log"
    cmd = [args.python, "main.py", *FP32_FLAGS, "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", str(scratch), "--disable-auto-launch"]
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=args.comfyui, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        asyncio.run(_wait_ready(proc, base, log, args.start_timeout))
        ready = time.perf_counter() - start
        res = asyncio.run(_queue_and_watch(base, prompt))
        res["rss_gib"] = vm_hwm_gib(proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    res.update(start_s=ready, cold_s=ready + res["prompt_s"])
    return res


def lg_run(scratch: Path, wf_path: Path, i: int, precision: str = "exact") -> dict:
    out_dir = scratch / f"lg_out_{precision}_{i}"
    shutil.rmtree(out_dir, ignore_errors=True)  # a kept scratch folder from an earlier call
    cmd = [sys.executable, "-m", "latentgraph", "run", str(wf_path), "--json", "--no-progress",
           "--models-dir", str(scratch / "models"), "--output-dir", str(out_dir), "--precision", precision]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=scratch, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"latentgraph run failed ({proc.returncode}):\n{stderr.decode(errors='replace')[-3000:]}")
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    pngs = sorted(out_dir.rglob("*.png"))
    if len(pngs) != 1:
        raise BenchError(f"latentgraph wrote {len(pngs)} PNGs in {out_dir}, expected 1")
    return {"cold_s": wall, "ksampler_s": result["timings"][SAMPLER_ID], "png": pngs[0].read_bytes()}


def lg_run_measured(scratch: Path, wf_path: Path, i: int, precision: str = "exact") -> dict:
    """lg_run in a forked helper so that RUSAGE_CHILDREN's max RSS is this run's alone."""
    import resource

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: run latentgraph as its own child, report, exit
        os.close(read)
        try:
            res = lg_run(scratch, wf_path, i, precision)
            res["png"] = res["png"].hex()
            res["rss_gib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
            payload = {"ok": res}
        except BenchError as exc:
            payload = {"error": str(exc)}
        with os.fdopen(write, "w") as f:
            json.dump(payload, f)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        payload = json.loads(f.read() or '{"error": "the measuring helper died"}')
    os.waitpid(pid, 0)
    if "error" in payload:
        raise BenchError(payload["error"])
    res = payload["ok"]
    res["png"] = bytes.fromhex(res["png"])
    return res


def psnr(png_a: bytes, png_b: bytes) -> float:
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(io.BytesIO(png_a)).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(io.BytesIO(png_b)).convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        raise BenchError(f"the PNGs differ in shape: latentgraph {a.shape}, ComfyUI {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def checkpoint(args, scratch: Path) -> str:
    """Put the checkpoint in SCRATCH/models/checkpoints (a link) for both sides; make it if needed."""
    src = Path(args.checkpoint) if args.checkpoint else CACHE / "sd15_full_seed0.safetensors"
    if not src.is_file():
        if args.checkpoint:
            raise BenchError(f"--checkpoint {src}: no such file")
        print(f"making {src} (full-size SD1.5, fp16, 2.1 GB; reused next time)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "latentgraph", "make-checkpoint", "--size", "full", "--family",
                        "sd15", "--seed", "0", str(src)], check=True)
    link = scratch / "models" / "checkpoints" / src.name
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(src.resolve())
    return src.name


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    lo, hi = min(values), max(values)
    return fmt.format(lo) if len(values) == 1 or fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}-{fmt.format(hi)}"


def summary(comfy: list[dict], lg: list[dict]) -> dict:
    rows = {}
    for key in ("cold_s", "ksampler_s", "rss_gib"):
        c, l = [r[key] for r in comfy], [r[key] for r in lg]
        # Runs are paired (run i of each side back to back), so the ratio is taken per pair.
        ratios = [b / a for a, b in zip(c, l)]
        rows[key] = {"comfyui": [min(c), max(c)], "latentgraph": [min(l), max(l)],
                     "ratio": [min(ratios), max(ratios)], "per_run": {"comfyui": c, "latentgraph": l}}
    rows["comfyui_start_s"] = [min(r["start_s"] for r in comfy), max(r["start_s"] for r in comfy)]
    rows["psnr_db"] = [psnr(l["png"], c["png"]) for l, c in zip(lg, comfy)]
    return rows


def fast_summary(exact: list[dict], fast: list[dict]) -> dict:
    """--precision fast against latentgraph's own exact run of the same pair."""
    speedups = [e["ksampler_s"] / f["ksampler_s"] for e, f in zip(exact, fast)]
    return {"ksampler_s": [f["ksampler_s"] for f in fast], "cold_s": [f["cold_s"] for f in fast],
            "rss_gib": [f["rss_gib"] for f in fast], "speedup_vs_exact": speedups,
            "psnr_vs_exact_db": [psnr(f["png"], e["png"]) for e, f in zip(exact, fast)]}


def print_table(rows: dict, args) -> None:
    print(f"SD1.5 {args.size}x{args.size}, {args.sampler} {args.steps} steps, cfg {args.cfg}, "
          f"{args.runs} fresh run(s) per side, CPU fp32")
    print(f"{'':<18}{'ComfyUI':>14}{'latentgraph':>14}{'lg/ComfyUI':>14}")
    names = {"cold_s": "cold wall s", "ksampler_s": "KSampler s", "rss_gib": "peak RSS GiB"}
    for key, name in names.items():
        r = rows[key]
        print(f"{name:<18}{span(r['comfyui']):>14}{span(r['latentgraph']):>14}{span(r['ratio'], '{:.2f}x'):>14}")
    print(f"ComfyUI server start {span(rows['comfyui_start_s'])} s (included in its cold wall)")
    print("PSNR latentgraph vs ComfyUI PNG: " + ", ".join(f"{p:.1f} dB" for p in rows["psnr_db"]))
    if "fast" in rows:
        f = rows["fast"]
        print(f"latentgraph --precision fast: KSampler {span(f['ksampler_s'])} s, "
              f"{span(f['speedup_vs_exact'], '{:.2f}x')} the speed of its exact run (goal >= 1.8x), "
              f"cold wall {span(f['cold_s'])} s, peak RSS {span(f['rss_gib'])} GiB, PSNR vs exact "
              + ", ".join(f"{p:.1f} dB" for p in f["psnr_vs_exact_db"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", required=True, type=Path, help="a ComfyUI checkout (its main.py is run)")
    p.add_argument("--python", help="ComfyUI's interpreter (default: DIR/../venv/bin/python if present, "
                   "else this one)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--cfg", type=float, default=7.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", type=int, default=2, help="fresh processes per side (default 2)")
    p.add_argument("--checkpoint", help=f"a checkpoint file (default: {CACHE}/sd15_full_seed0.safetensors, "
                   "made with make-checkpoint --size full --family sd15 --seed 0 if absent)")
    p.add_argument("--keep", type=Path, help="scratch folder, kept (default: a temporary one, removed)")
    p.add_argument("--port", type=int, default=0, help="ComfyUI's port on 127.0.0.1 (default: a free one)")
    p.add_argument("--start-timeout", type=float, default=300, help="seconds to wait for ComfyUI to answer")
    p.add_argument("--fast", action="store_true", help="also run latentgraph --precision fast each run")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = p.parse_args()
    if not (args.comfyui / "main.py").is_file():
        p.error(f"--comfyui {args.comfyui}: no main.py there (not a ComfyUI checkout)")
    if args.size < 64 or args.size % 8 or args.steps < 1 or args.runs < 1:
        p.error("--size must be a multiple of 8, at least 64; --steps and --runs at least 1")
    venv_py = args.comfyui.resolve().parent / "venv" / "bin" / "python"
    args.python = args.python or (str(venv_py) if venv_py.exists() else sys.executable)
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="lg_vs_comfy_"))
    try:
        return run(args, scratch.resolve())
    except BenchError as exc:
        print(f"compare_comfyui: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)


def run(args, scratch: Path) -> int:
    # ComfyUI's --base-directory must hold these folders or its start-up fails.
    for sub in ("custom_nodes", "input", "output", "user", "temp"):
        (scratch / sub).mkdir(parents=True, exist_ok=True)
    name = checkpoint(args, scratch)
    prompt = workflow(name, args.size, args.steps, args.cfg, args.sampler, args.seed)
    wf_path = scratch / "workflow_api.json"
    wf_path.write_text(json.dumps(prompt, indent=1))
    comfy, lg, fast = [], [], []
    for i in range(args.runs):
        print(f"run {i + 1}/{args.runs}: ComfyUI ...", file=sys.stderr, flush=True)
        comfy.append(comfy_run(args, scratch, prompt, i))
        print(f"run {i + 1}/{args.runs}: latentgraph ...", file=sys.stderr, flush=True)
        lg.append(lg_run_measured(scratch, wf_path, i))
        if args.fast:
            print(f"run {i + 1}/{args.runs}: latentgraph --precision fast ...", file=sys.stderr, flush=True)
            fast.append(lg_run_measured(scratch, wf_path, i, "fast"))
    rows = summary(comfy, lg)
    if fast:
        rows["fast"] = fast_summary(lg, fast)
    if args.json:
        print(json.dumps({"size": args.size, "steps": args.steps, "cfg": args.cfg, "sampler": args.sampler,
                          "runs": args.runs, **rows,
                          # identical PNGs give an infinite PSNR, which strict JSON cannot hold
                          "psnr_db": [None if math.isinf(v) else v for v in rows["psnr_db"]]}, indent=1))
    else:
        print_table(rows, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
