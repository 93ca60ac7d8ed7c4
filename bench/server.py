"""The server under load: `latentgraph serve` in its own process, 200 prompts of a tiny
workflow (an 8x8 image saved as PNG, a new colour each time so nothing is cached) posted by 10
concurrent websocket clients. Prints throughput, p50/p99 from a prompt's first `executing`
message to its `executed` message reaching the client, and the server's overhead per prompt:
one client posting prompts one after another (POST to `executing` null) against the same
workflows run by an Executor in this process.

    python bench/server.py [--prompts 200] [--clients 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from latentgraph.server import wait_until_listening


def tiny(i: int, prefix: str) -> dict:
    return {"img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                           "color": (i * 7919) % 0xFFFFFF}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["img", 0], "filename_prefix": prefix}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_client(session, url: str, sid: str, prompts: list[dict]) -> list[tuple[float, float, float]]:
    """Post each prompt and wait for its end; per prompt (post time, first executing, executed)."""
    out = []
    async with session.ws_connect(f"{url}/ws?clientId={sid}") as ws:
        await ws.receive_json()
        for prompt in prompts:
            posted = time.perf_counter()
            r = await session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": sid})
            pid = (await r.json())["prompt_id"]
            first = executed = None
            while True:
                msg = await ws.receive_json(timeout=120)
                data = msg["data"]
                if msg["type"] == "executing" and data.get("prompt_id") == pid:
                    if data["node"] is None:
                        break
                    first = first or time.perf_counter()
                elif msg["type"] == "executed" and data["prompt_id"] == pid:
                    executed = time.perf_counter()
            out.append((posted, first, executed, time.perf_counter()))
    return out


async def load(url: str, n_prompts: int, n_clients: int) -> tuple[float, list[float]]:
    per = [[tiny(c * 100_000 + i, f"c{c}") for i in range(n_prompts // n_clients)] for c in range(n_clients)]
    async with aiohttp.ClientSession() as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(session, url, f"bench{c}", per[c]) for c in range(n_clients)))
        wall = time.perf_counter() - start
    latencies = [(executed - first) * 1000 for r in results for _, first, executed, _ in r]
    return wall, latencies


async def sequential(url: str, n: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        rows = await one_client(session, url, "seq", [tiny(900_000 + i, "seq") for i in range(n)])
    return [(end - posted) * 1000 for posted, _, _, end in rows]


def direct(n: int, out: Path) -> list[float]:
    from latentgraph.graph import Environment, Executor, Workflow
    from latentgraph.nodes import create_registry

    ex = Executor(create_registry(), Environment(output_dir=out, device="cpu"))
    ex.run(Workflow.from_api(tiny(0, "warm")))
    times = []
    for i in range(n):
        wf = Workflow.from_api(tiny(800_000 + i, "direct"))
        t = time.perf_counter()
        ex.run(wf)
        times.append((time.perf_counter() - t) * 1000)
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=100, help="prompts for the overhead measure")
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "latentgraph", "serve", "--port", str(port), "--output-dir", f"{tmp}/out",
               "--user-dir", f"{tmp}/user", "--models-dir", f"{tmp}/models", "--device", "cpu"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        try:
            wait_until_listening(port, process=server)
            asyncio.run(sequential(url, 10))  # warm-up
            wall, latencies = asyncio.run(load(url, args.prompts, args.clients))
            seq = asyncio.run(sequential(url, args.sequential))
        finally:
            server.terminate()
            server.wait(10)
        dir_times = direct(args.sequential, Path(tmp) / "direct")
    n = len(latencies)
    print(f"{n} prompts from {args.clients} concurrent clients: {wall:.2f} s, {n / wall:.0f} prompts/s")
    print(f"  first `executing` -> `executed` at the client: p50 {pct(latencies, 0.5):.2f} ms, "
          f"p99 {pct(latencies, 0.99):.2f} ms")
    s, d = statistics.median(seq), statistics.median(dir_times)
    print(f"one client, one prompt at a time (POST -> `executing` null): median {s:.2f} ms; "
          f"the same workflow on an Executor in-process: {d:.2f} ms")
    print(f"  server overhead per prompt: {s - d:.2f} ms (goal < 5 ms)")


if __name__ == "__main__":
    main()
