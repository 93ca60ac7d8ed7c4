"""The workflow-file fuzzer of tests/test_fuzz_workflows.py, run for many more cases.

    python bench/fuzz_workflows.py [--cases 20000] [--seed N] [--cli 0.05]

Generates YAML, API JSON, UI JSON, PNGs and raw bytes (from scratch and by mutating the
repository's real workflows), loads and validates each against the built-in registry, sends a
fraction through the CLI in-process, and prints the count of each outcome: refused (a clean
WorkflowError), invalid (a clean ValidationError), valid, and crash (anything else, each one
printed with its file and traceback). Exits 1 when anything crashed.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from latentgraph.graph import Environment  # noqa: E402
from test_fuzz_workflows import cases, check_case, check_cli  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--cli", type=float, default=0.05, help="fraction of cases also run through the CLI")
    args = parser.parse_args()
    run_seed = args.seed if args.seed is not None else random.randrange(2**32)
    pick = random.Random(run_seed)
    counts: Counter = Counter()
    crashes: list[tuple[str, bytes, str]] = []
    folder = Path(tempfile.mkdtemp(prefix="lg-fuzz-"))
    env = Environment(models_dir=folder / "models", input_dir=folder / "input")

    def one(case):
        kind, data = case
        try:
            counts[check_case(kind, data, folder, env)] += 1
            if pick.random() < args.cli:
                counts[f"cli exit {check_cli(kind, data, folder)}"] += 1
        except Exception:  # noqa: BLE001 - the point is to see every crash
            counts["crash"] += 1
            crashes.append((kind, data, traceback.format_exc()))

    start = time.perf_counter()
    # batches of 1,000 with seeds of their own: Hypothesis keeps a tree of every case of a run,
    # which grows past a GB over 20,000; only the generate phase (a crash is recorded, not shrunk)
    for batch, first in enumerate(range(0, args.cases, 1000)):
        run = settings(max_examples=min(1000, args.cases - first), deadline=None, database=None,
                       phases=[Phase.generate], suppress_health_check=list(HealthCheck))(given(cases)(one))
        seed(run_seed + batch)(run)()
    seconds = time.perf_counter() - start
    total = sum(v for k, v in counts.items() if not k.startswith("cli"))
    print(f"seed {run_seed}: {total} cases in {seconds:.0f} s ({total / seconds:.0f}/s)")
    for outcome in ("refused", "invalid", "valid", "crash", "cli exit 0", "cli exit 1"):
        print(f"  {outcome:<11} {counts[outcome]:>7}")
    for kind, data, text in crashes[:10]:
        print(f"\ncrash on a {kind} file of {len(data)} bytes: {data[:300]!r}\n{text}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
