"""How fast the CLI starts (issue 17: "the CLI feels instant").

    python bench/cli.py                    # each command cold, 5 runs (3 for run), medians
    python bench/cli.py --baseline HEAD~5  # the same commands from an older commit, alternated
    python bench/cli.py --runs 9 --json out.json

Each run is a fresh process (`python -m latentgraph ...`, as `make demo` starts one) in a
scratch folder; commands are interleaved run by run so a busy machine slows all of them alike.
Prints the median wall time of each command against its goal (`run` of the demo < 3 s;
`validate`, `convert`, `nodes`, `--help` < 1 s), the import costs that remain (one extra run
per command under `python -X importtime`: the top-level modules by cumulative time), and with
--baseline the ratio new/old of each command measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "workflows" / "txt2img.yaml"

# name -> (arguments after `python -m latentgraph`, goal in seconds)
COMMANDS = {
    "--help": (["--help"], 1.0),
    "nodes": (["nodes"], 1.0),
    "nodes --missing": (["nodes", "--missing"], 1.0),
    "validate": (["validate", str(DEMO)], 1.0),
    "convert": (["convert", str(DEMO), "--to", "api"], 1.0),
    "run (make demo)": (["run", str(DEMO), "--output-dir", "output", "--no-progress"], 3.0),
}


def _env(tree: Path | None, scratch: Path) -> dict:
    env = dict(os.environ, PYTHONWARNINGS="ignore", LATENTGRAPH_CONFIG=str(scratch / "config.yaml"))
    if tree is not None:  # an older checkout's package ahead of the installed one
        env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_once(args: list[str], scratch: Path, tree: Path | None, importtime: bool = False) -> tuple[float, str]:
    """Wall seconds of one fresh `python -m latentgraph ARGS`, and its stderr."""
    cmd = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "latentgraph", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=scratch, env=_env(tree, scratch), capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench/cli.py: `latentgraph {' '.join(args)}` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stderr + proc.stdout


def top_imports(importtime_log: str, n: int = 6) -> list[tuple[str, float]]:
    """Top-level modules (one indent level) by cumulative import seconds."""
    rows = []
    for line in importtime_log.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$", line)
        if m and len(m.group(3)) <= 2:  # " name" or "  name": imported by the program itself
            rows.append((m.group(4), int(m.group(2)) / 1e6))
    return sorted(rows, key=lambda r: -r[1])[:n]


def bench(runs: int, trees: dict[str, Path | None], scratch: Path) -> dict:
    """{tree label: {command: [wall seconds]}}, the runs interleaved across trees and commands."""
    times: dict = {label: {name: [] for name in COMMANDS} for label in trees}
    for i in range(runs):
        for name, (args, _) in COMMANDS.items():
            if name.startswith("run") and i >= max(3, runs // 2 + 1):
                continue  # the demo run takes seconds: fewer of them
            for label, tree in trees.items():
                times[label][name].append(run_once(args, scratch, tree)[0])
    return times


def _work_seconds(log: str) -> float | None:
    m = re.search(r"done in ([\d.]+) s", log)
    return float(m.group(1)) if m else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (the demo run: about half)")
    parser.add_argument("--baseline", metavar="GITREF", help="also time the package as of this commit, alternated")
    parser.add_argument("--json", metavar="FILE", help="write every figure here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lg-bench-cli-") as tmp:
        scratch = Path(tmp)
        (scratch / "config.yaml").write_text("custom_nodes: []\n")  # no user plugins in the figures
        trees: dict[str, Path | None] = {"now": None}
        if args.baseline:
            old = scratch / "baseline"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "latentgraph"],
                                     capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            trees[args.baseline] = old
        for tree in trees.values():  # warm the OS file cache and .pyc files: "cold" = a new process
            run_once(COMMANDS["nodes"][0], scratch, tree)
            run_once(COMMANDS["run (make demo)"][0], scratch, tree)
        times = bench(args.runs, trees, scratch)
        report = {"runs": args.runs, "machine": f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
                  "commands": {}}
        print(f"latentgraph CLI, cold processes ({report['machine']}); median of n runs, seconds")
        for name, (cmd, goal) in COMMANDS.items():
            wall, log = run_once(cmd, scratch, None, importtime=True)
            entry = {label: times[label][name] for label in trees}
            med = statistics.median(entry["now"])
            verdict = "met" if med < goal else "MISSED"
            line = f"  {name:17s} {med:6.2f} s  (n={len(entry['now'])}, {min(entry['now']):.2f}-{max(entry['now']):.2f})" \
                   f"  goal < {goal:g} s: {med / goal:.2f} of it, {verdict}"
            if args.baseline:
                base = statistics.median(entry[args.baseline])
                line += f"; {args.baseline} {base:.2f} s, now/then {med / base:.2f}x"
            print(line)
            imports = top_imports(log)
            work = _work_seconds(log)
            print("      imports: " + ", ".join(f"{mod} {sec:.2f}" for mod, sec in imports)
                  + (f"; the run's own work {work:.2f} s" if work is not None else ""))
            report["commands"][name] = {"goal_s": goal, "median_s": med, "times": entry,
                                        "top_imports": imports, "work_s": work}
    print("(timings on a shared machine are noisy: compare medians taken in the same run)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
