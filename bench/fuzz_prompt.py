"""The /prompt fuzz of tests/test_fuzz_prompt.py for longer, with random seeds.

    .venv/bin/python bench/fuzz_prompt.py [CASES] [--seed N]

Sends CASES generated bodies (default 20,000: three in four structured, one in four raw bytes)
to an app with the toy nodes and no worker, and prints the count, the statuses seen, and every
failure: a status other than 200/400, a body that is not a JSON object, or an ERROR logged."""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from test_fuzz_prompt import Target, bodies, encode, raw_bodies  # noqa: E402


class Errors(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(self.format(record))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="?", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random)")
    args = parser.parse_args()
    run_seed = args.seed if args.seed is not None else random.randrange(2 ** 32)
    errors = Errors()
    logging.getLogger().addHandler(errors)
    failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        target = Target(Path(tmp))

        @seed(run_seed)
        @settings(max_examples=args.cases, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(data=st.one_of(bodies.map(encode), bodies.map(encode), bodies.map(encode), raw_bodies))
        def fuzz(data):
            before = len(errors.records)
            problem = target.check(data)
            if problem:
                failures.append(problem)
            for message in errors.records[before:]:
                failures.append(f"logged at ERROR for {data[:200]!r}: {message[:500]}")

        start = time.perf_counter()
        fuzz()
        seconds = time.perf_counter() - start
        target.close()
    statuses = target.statuses
    sent = sum(statuses.values())
    print(f"seed {run_seed}: {sent} bodies in {seconds:.1f} s ({sent / max(seconds, 1e-9):.0f}/s); "
          f"statuses {dict(sorted(statuses.items()))}; {len(failures)} failures")
    for problem in failures[:50]:
        print("  FAIL", problem)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
