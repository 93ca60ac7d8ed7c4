"""The Ray runner on a local cluster (two CPU slots and two logical GPUs, all on 127.0.0.1):
a 16-job sweep on a tiny checkpoint gives the same bytes as an in-process run, killing a
worker mid-batch loses and duplicates nothing, a rerun does no new work, and the CLI reaches
the cluster by address. Marked `ray`: .ci/run installs the extra and runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentgraph.batch import LocalRunner, make_jobs, read_record, run_batch, sweep_overrides
from latentgraph.batch.ray_runner import RayRunner  # imports without Ray; using it needs the extra
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes import create_registry, create_services

pytestmark = pytest.mark.ray

WORKFLOW = """nodes:
  ckpt: {type: CheckpointLoaderSimple, ckpt_name: tiny.safetensors}
  pos: {type: CLIPTextEncode, clip: ckpt.CLIP, text: a red circle}
  neg: {type: CLIPTextEncode, clip: ckpt.CLIP, text: ''}
  latent: {type: EmptyLatentImage, width: 64, height: 64}
  sampler: {type: KSampler, model: ckpt.MODEL, positive: pos, negative: neg, latent_image: latent,
            seed: 0, steps: 3, cfg: 5.0}
  decode: {type: VAEDecode, samples: sampler, vae: ckpt.VAE}
  save: {type: SaveImage, images: decode, filename_prefix: sweep}
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("ray_home")
    make_checkpoint(home / "models" / "checkpoints" / "tiny.safetensors", "sd15", "tiny", seed=0)
    (home / "wf.yaml").write_text(WORKFLOW)
    return home


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray = pytest.importorskip("ray", reason="pip install -e '.[ray]'")
    context = ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="warning",
                       _node_ip_address="127.0.0.1")
    yield context
    ray.shutdown()


def env_for(home: Path, out: str) -> Environment:
    return Environment(output_dir=home / out, models_dir=home / "models", input_dir=home / "input",
                       temp_dir=home / "temp", device="cpu")


def sweep(home: Path, env: Environment):
    registry = create_registry()
    wf = Workflow.load(home / "wf.yaml", registry)
    return make_jobs(wf, sweep_overrides(["sampler.seed=1..16"]), registry, env)


def pictures(out: Path) -> dict[str, bytes]:
    return {p.parent.name: p.read_bytes() for p in out.glob("*/*.png")}


@pytest.fixture(scope="module")
def reference(home):
    """The sweep run sequentially in this process, with one thread as each worker has (a CPU
    slot each): float sums on the CPU depend on how many threads share them."""
    import torch

    env = env_for(home, "reference")
    jobs = sweep(home, env)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_batch(jobs, LocalRunner(Executor(create_registry(), env, services=create_services(env))),
                           env.output_dir, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(result.done) == 16
    return pictures(env.output_dir)


def test_sweep_on_ray_matches_in_process_and_a_rerun_does_nothing(cluster, home, reference):
    env = env_for(home, "ray")
    jobs = sweep(home, env)
    runner = RayRunner("local", env, plugins=False)
    progress = []
    try:
        assert len(runner.workers) == 2 and runner.name == "ray (2 workers, GPU)"
        result = run_batch(jobs, runner, env.output_dir, progress=False)
        assert len(result.done) == 16 and not result.failed
        assert pictures(env.output_dir) == reference  # byte for byte
        workers = {read_record(env.output_dir, j.job_id)["worker"] for j in jobs}
        assert workers == {"worker-0", "worker-1"}  # both worked
        # every job loads the same checkpoint: after the first, each worker holds it
        assert all(held == {"tiny.safetensors"} for held in runner.held.values())
        rerun = run_batch(jobs, runner, env.output_dir, progress=False)
        assert not rerun.done and len(rerun.skipped) == 16
        registry = create_registry()
        (extra,) = make_jobs(Workflow.load(home / "wf.yaml", registry), [{"sampler.seed": 99}], registry, env)
        records = []
        runner.run([extra], records.append, lambda job, data: progress.append((job.job_id, data["event"])))
        assert records[0]["status"] == "success"
        assert (extra.job_id, "progress") in progress  # step events came back from the worker
    finally:
        runner.close()


def test_a_worker_killed_mid_batch_loses_nothing(cluster, home, reference):
    env = env_for(home, "killed")
    jobs = sweep(home, env)
    runner = RayRunner("local", env, plugins=False)
    finished = []

    def on_done(record):
        finished.append(record)
        if len(finished) == 2:
            runner.kill_worker(0)  # worker-0 dies with jobs queued on it

    try:
        runner.run(jobs, on_done, lambda job, data: None)
        from latentgraph.batch import write_record

        for record in finished:
            write_record(env.output_dir, record)
    finally:
        runner.close()
    assert sorted(r["job_id"] for r in finished) == sorted(j.job_id for j in jobs)  # each once
    assert all(r["status"] == "success" for r in finished)
    assert any(r["attempts"] == 2 for r in finished)  # retried on the other worker
    assert {r["worker"] for r in finished if r["attempts"] == 2} == {"worker-1"}
    assert pictures(env.output_dir) == reference
    assert all(len(list((env.output_dir / j.job_id).glob("*.png"))) == 1 for j in jobs)


def test_the_cli_reaches_the_cluster_by_address(cluster, home, reference):
    jobs = home / "jobs.yaml"
    jobs.write_text("workflow: wf.yaml\ngrid:\n  sampler.seed: 1..4\n")
    address = cluster.address_info["gcs_address"]
    proc = subprocess.run([sys.executable, "-m", "latentgraph", "batch", str(jobs), "--ray", address,
                           "--workers", "2", "--output-dir", str(home / "cli"), "--models-dir", str(home / "models"),
                           "--no-progress", "--no-plugins", "--device", "cpu"],
                          capture_output=True, text=True, env=dict(os.environ, RAY_AUTH_MODE="disabled"), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "batch: 4 jobs on ray (2 workers, GPU): 4 done, 0 already done, 0 failed" in proc.stdout
    got = pictures(home / "cli")
    assert len(got) == 4 and all(reference[k] == v for k, v in got.items())


class StopsAfterThree(RayRunner):
    """Ctrl-C arrives while the dispatcher waits, once three jobs are recorded."""

    def run(self, todo, on_done, on_progress):
        def counting(record):
            on_done(record)
            counting.n += 1
            if counting.n == 3:
                raise KeyboardInterrupt
        counting.n = 0
        return super().run(todo, counting, on_progress)


def test_interrupting_a_batch_keeps_what_is_done(cluster, home, reference):
    env = env_for(home, "interrupted")
    jobs = sweep(home, env)
    runner = StopsAfterThree("local", env, plugins=False)
    try:
        result = run_batch(jobs, runner, env.output_dir, progress=False)
        assert result.interrupted and len(result.done) == 3
        assert not runner.alive  # the workers were stopped
    finally:
        runner.close()
    done = {r["job_id"] for r in result.done}
    assert {p.parent.name for p in env.output_dir.glob("*/job.json")} == done
    assert all(reference[k] == v for k, v in pictures(env.output_dir).items() if k in done)
    # the rerun does the rest and leaves the three alone
    again = RayRunner("local", env, plugins=False)
    try:
        rest = run_batch(jobs, again, env.output_dir, progress=False)
    finally:
        again.close()
    assert len(rest.skipped) == 3 and len(rest.done) == 13 and pictures(env.output_dir) == reference


def test_serve_on_ray_relays_progress_and_files(cluster, home, reference):
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from latentgraph.batch.ray_runner import RayExecutor
    from latentgraph.server import create_app

    env = env_for(home, "served")
    registry = create_registry()
    prompt = Workflow.load(home / "wf.yaml", registry).to_api(registry)
    executor = RayExecutor("local", env, workers=2, plugins=False)

    async def scenario():
        app = create_app(registry, env, user_dir=home / "user", frontend="none", executor=executor)
        async with TestClient(TestServer(app)) as client:
            ws = await client.ws_connect("/ws?clientId=tester")
            ids = []
            for seed in (1, 2, 3):
                body = {"prompt": {**prompt, "sampler": {**prompt["sampler"], "inputs": {
                    **prompt["sampler"]["inputs"], "seed": seed}}}, "client_id": "tester"}
                ids.append((await (await client.post("/prompt", json=body)).json())["prompt_id"])
            events: dict[str, list] = {pid: [] for pid in ids}
            finished = set()
            while finished != set(ids):
                msg = await asyncio.wait_for(ws.receive(), timeout=120)
                if msg.type.name != "TEXT":
                    continue
                data = msg.json()
                pid = data["data"].get("prompt_id") if isinstance(data.get("data"), dict) else None
                if pid in events:
                    events[pid].append(data["type"])
                    # `executing` with no node comes once the history holds the result, as in ComfyUI
                    if data["type"] == "executing" and data["data"].get("node") is None:
                        finished.add(pid)
            files = []
            for pid in ids:
                assert "progress" in events[pid] and "executed" in events[pid]
                history = (await (await client.get(f"/history/{pid}")).json())[pid]
                assert history["status"]["status_str"] == "success"
                (image,) = history["outputs"]["save"]["images"]
                view = await client.get("/view", params={"filename": image["filename"], "type": "output",
                                                         "subfolder": image["subfolder"]})
                assert view.status == 200
                files.append((image["subfolder"], image["filename"], await view.read()))
            await ws.close()
            return files

    try:
        files = asyncio.run(scenario())
    finally:
        executor.close()
    assert len({(s, f) for s, f, _ in files}) == 3  # renumbered where two workers chose the same name
    assert len({data for _, _, data in files}) == 3  # three seeds
