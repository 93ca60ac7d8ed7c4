"""The patch layer's cost when no patch is set, before and after, side by side in one run:
bench/sampling.py of this tree and of an earlier checkout (e.g. the commit before the patch
layer), run alternately in fresh processes on the same checkpoint, so both see the same machine
load. Prints each run's KSampler time and the median ratio after/before.

    git worktree add /tmp/before e9fab54        # or: git archive e9fab54 latentgraph bench | tar -x -C DIR
    python bench/sampling_ab.py --before /tmp/before [--after TREE] [--ckpt PATH] [--rounds 3] [--size 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
LINE = re.compile(r"KSampler node: ([0-9.]+) s")


def one_run(tree: Path, ckpt: Path, extra: list[str]) -> float:
    """The median KSampler time that ``tree``'s bench/sampling.py reports (its package first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, str(tree / "bench" / "sampling.py"), "--ckpt", str(ckpt), *extra],
                          capture_output=True, text=True, env=env, cwd=tree)
    found = LINE.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise SystemExit(f"{tree}: bench/sampling.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return float(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the earlier commit")
    parser.add_argument("--after", type=Path, default=HERE, help="the tree to compare (default: this one)")
    parser.add_argument("--ckpt", type=Path, default=HERE / "bench" / ".cache" / "sd15_tiny_fp16.safetensors")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs inside each bench/sampling.py (median)")
    args = parser.parse_args()
    if not args.ckpt.exists():
        sys.path.insert(0, str(HERE))
        from latentgraph.models.make import make_checkpoint

        size = "tiny" if "tiny" in args.ckpt.name else "full"
        args.ckpt.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.ckpt} ({size}-size SD1.5, random weights) ...", flush=True)
        make_checkpoint(args.ckpt, "sd15", size, seed=0, dtype="fp16")
    extra = ["--size", str(args.size), "--steps", str(args.steps), "--runs", str(args.runs)]
    before, after = [], []
    for r in range(args.rounds):
        before.append(one_run(args.before.resolve(), args.ckpt.resolve(), extra))
        after.append(one_run(args.after.resolve(), args.ckpt.resolve(), extra))
        print(f"round {r + 1}: before {before[-1]:.3f} s, after {after[-1]:.3f} s "
              f"(ratio {after[-1] / before[-1]:.3f})", flush=True)
    b, a = statistics.median(before), statistics.median(after)
    print(f"{args.ckpt.name}, {args.size}x{args.size}, {args.steps} steps, no patch set: "
          f"median before {b:.3f} s, after {a:.3f} s, ratio after/before {a / b:.3f}")


if __name__ == "__main__":
    main()
