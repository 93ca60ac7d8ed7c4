"""The main job, cold: `latentgraph run workflows/txt2img.yaml` in a fresh process with the
shipped demo model. Prints the wall time (goal: under 5 s on 2 cores, Python start-up
included) and where it goes: interpreter start, imports, each node (load, encode, sample,
decode, save), the engine, interpreter exit — measured in a second fresh process.

    python bench/demo.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "workflows" / "txt2img.yaml"

PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
from latentgraph.cli import main  # everything `latentgraph run` imports
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry, create_services
t1 = time.perf_counter()
env = Environment(output_dir=sys.argv[2])
ex = Executor(create_registry(), env, services=create_services(env))
res = ex.run(Workflow.load(sys.argv[1]))
t2 = time.perf_counter()
print(json.dumps({"imports": t1 - t0, "run": t2 - t1, "timings": res.timings}))
"""


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "latentgraph", "run", str(WORKFLOW)]
    with tempfile.TemporaryDirectory() as tmp:
        walls = [wall(cli + ["--output-dir", f"{tmp}/w{i}"]) for i in range(args.runs)]
        startup = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(3))
        probes = []
        for i in range(args.runs):
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", PROBE, str(WORKFLOW), f"{tmp}/p{i}"], check=True,
                                 capture_output=True, text=True).stdout
            probe = json.loads(out.strip().splitlines()[-1])
            probe["wall"] = time.perf_counter() - start
            probes.append(probe)
    w = statistics.median(walls)
    print(f"latentgraph run workflows/txt2img.yaml, cold process: {w:.2f} s wall (median of {args.runs}; "
          f"min {min(walls):.2f}) — goal < 5 s: {'met' if w < 5 else 'NOT met'}")
    p = sorted(probes, key=lambda r: r["imports"] + r["run"])[len(probes) // 2]
    t = p["timings"]
    parts = [("python start-up (bare interpreter)", startup),
             ("imports (torch, transformers, latentgraph)", p["imports"]),
             ("load checkpoint", t.get("ckpt", 0.0)), ("encode prompts", t.get("positive", 0.0) + t.get("negative", 0.0)),
             ("empty latent", t.get("latent", 0.0)), ("sample (20 steps)", t.get("sampler", 0.0)),
             ("decode", t.get("decode", 0.0)), ("save PNG", t.get("save", 0.0))]
    engine = p["run"] - sum(t.values())
    parts.append(("engine (validate, plan, cache, events)", engine))
    parts.append(("interpreter exit (tearing down torch, transformers)", p["wall"] - p["imports"] - p["run"] - startup))
    for name, seconds in parts:
        print(f"  {name:45s} {seconds:6.3f} s")
    print(f"  {'sum':45s} {sum(s for _, s in parts):6.3f} s")


if __name__ == "__main__":
    main()
