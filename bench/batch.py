"""Batch runs: 32 jobs (the demo txt2img, seeds 1..32, 20 euler steps at 64x64 with the shipped
model) in this process, and on a local Ray cluster with 1 and then 2 workers, side by side in
one run. Prints each wall time, the 2-worker speed-up over 1 worker, and the Ray path's
overhead per job against the in-process run with the same thread count (a Ray worker on a CPU
slot runs torch on one thread). Needs the extra: pip install -e '.[ray]'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=32)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    import torch

    from latentgraph.batch import LocalRunner, make_jobs, run_batch, sweep_overrides
    from latentgraph.batch.ray_runner import RayRunner
    from latentgraph.graph import Environment, Executor, Workflow
    from latentgraph.nodes import create_registry, create_services

    work = Path(tempfile.mkdtemp(prefix="lg-bench-batch-"))
    registry = create_registry()
    wf = Workflow.load(ROOT / "workflows" / "txt2img.yaml", registry)

    def jobs_for(env):
        return make_jobs(wf, sweep_overrides([f"sampler.seed=1..{args.jobs}"]), registry, env)

    def env_for(name):
        return Environment(output_dir=work / name, temp_dir=work / "temp", device="cpu")

    rows = []

    def local(threads: int) -> float:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            env = env_for(f"local{threads}")
            jobs = jobs_for(env)
            start = time.perf_counter()
            result = run_batch(jobs, LocalRunner(Executor(registry, env, services=create_services(env))),
                               env.output_dir, progress=False)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(before)
        assert len(result.done) == args.jobs
        rows.append((f"in-process, {threads} thread{'s' if threads > 1 else ''}", seconds))
        return seconds

    local_default = local(torch.get_num_threads())
    local_one = local(1)
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", _node_ip_address="127.0.0.1")
    rows.append(("ray.init (local cluster, once)", time.perf_counter() - start))
    timings = {}
    try:
        for workers in (1, 2):
            env = env_for(f"ray{workers}")
            jobs = jobs_for(env)
            start = time.perf_counter()
            runner = RayRunner("local", env, workers=workers, plugins=False)
            ready = time.perf_counter() - start
            try:
                result = run_batch(jobs, runner, env.output_dir, progress=False)
            finally:
                runner.close()
            total = time.perf_counter() - start
            assert len(result.done) == args.jobs and not result.failed
            timings[workers] = (total, total - ready)
            rows.append((f"ray, {workers} worker{'s' if workers > 1 else ''} (actors up in {ready:.2f} s)", total))
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.jobs} jobs: the demo txt2img, seeds 1..{args.jobs}, 20 euler steps, 64x64, CPU")
    for label, seconds in rows:
        per = f"{seconds / args.jobs * 1000:8.1f} ms/job" if not label.startswith("ray.init") else ""
        print(f"  {label:<48} {seconds:7.2f} s {per}")
    (one, one_run), (two, two_run) = timings[1], timings[2]
    print(f"speed-up, 2 workers over 1: {one / two:.2f}x with the actors' start, {one_run / two_run:.2f}x without")
    print(f"Ray path overhead per job against in-process on 1 thread (1 worker): "
          f"{(one_run - local_one) / args.jobs * 1000:.1f} ms once the actors are up "
          f"({(one - local_one) / args.jobs * 1000:.1f} ms with their start spread over the jobs)")
    print(f"2 Ray workers against in-process on {torch.get_num_threads()} threads: {local_default / two:.2f}x "
          f"with the actors' start, {local_default / two_run:.2f}x without")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
