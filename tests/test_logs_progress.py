"""ComfyUI's /internal routes and log terminal (the buffer, the "logs" websocket messages to
subscribed clients, folders and files), and per-node progress: progress_state events from the
executor (running, each step, finished; cached nodes; expanded nodes) and over the websocket,
and a node's progress text as ComfyUI's binary frame."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import pytest
from aiohttp import WSMsgType

from latentgraph.graph import Environment, Executor, Int, NodeContext, Workflow, node
from latentgraph.graph.registry import NodeRegistry
from latentgraph.nodes import create_registry, create_services
from latentgraph.plugins.comfy_v1 import node_def
from latentgraph.server.logs import elapsed, progress_text_frame
from test_lazy_expand import AddN, AddOne, Number  # V1 nodes: a constant, +1, and +1 n times by expansion
from test_server import served, until_done  # an app on the module's registry; messages until a prompt ends

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())
test_log = logging.getLogger("latentgraph.test")


@node(outputs=["INT"])
def Chatty(value: Annotated[int, Int(1, min=0, max=100)], ctx: NodeContext) -> int:
    """Reports a line of text, as a node showing what it does."""
    ctx.progress_text(f"counted {value} é")
    return value


@pytest.fixture(scope="module")
def shared():
    registry = create_registry()
    registry.register(Chatty)
    return registry, create_services(Environment(device="cpu"))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def connect(client, sid: str):
    ws = await client.ws_connect(f"/ws?clientId={sid}")
    first = await ws.receive_json(timeout=10)
    assert first["type"] == "status"
    return ws


async def next_of(ws, kind: str, timeout: float = 10) -> dict:
    """The data of the next JSON message of type ``kind`` (others are skipped)."""
    end = time.monotonic() + timeout
    while True:
        msg = await ws.receive(timeout=max(0.01, end - time.monotonic()))
        if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind:
            return json.loads(msg.data)["data"]


async def none_of(ws, kind: str, wait: float = 0.6) -> None:
    """No message of type ``kind`` arrives within ``wait`` seconds."""
    end = time.monotonic() + wait
    while time.monotonic() < end:
        try:
            msg = await ws.receive(timeout=end - time.monotonic())
        except asyncio.TimeoutError:
            return
        assert not (msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == kind), msg.data


# -- logs ------------------------------------------------------------------------------------
def test_logged_lines_are_in_the_raw_entries_and_the_joined_text(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            test_log.warning("marker-123")
            threading.Thread(target=test_log.error, args=("marker-from-a-thread",)).start()
            await asyncio.sleep(0.1)
            r = await client.get("/internal/logs/raw")
            assert r.status == 200
            raw = await r.json()
            assert set(raw) == {"entries", "size"}
            assert isinstance(raw["size"]["cols"], int) and isinstance(raw["size"]["rows"], int)
            (entry,) = [e for e in raw["entries"] if "marker-123" in e["m"]]
            assert set(entry) == {"t", "m"} and entry["m"] == "marker-123\n"
            datetime.fromisoformat(entry["t"])  # an ISO time
            assert any("marker-from-a-thread" in e["m"] for e in raw["entries"])
            r = await client.get("/internal/logs")
            text = await r.json()
            assert isinstance(text, str) and f"{entry['t']} - marker-123\n" in text
            assert (await client.get("/api/internal/logs")).status == 404
            assert (await client.get("/api/internal/logs/raw")).status == 404
    run(go())


def test_the_capture_ends_with_the_app_and_keeps_the_last_300(tmp_path, shared):
    root = logging.getLogger()
    before = list(root.handlers)

    async def go():
        async with served(tmp_path, shared) as client:
            assert len(root.handlers) == len(before) + 1
            for i in range(310):
                test_log.warning("line %d", i)
            raw = await (await client.get("/internal/logs/raw")).json()
            assert len(raw["entries"]) == 300 and raw["entries"][-1]["m"] == "line 309\n"
    run(go())
    assert root.handlers == before


def test_a_subscribed_client_gets_new_entries_and_the_others_none(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            alice, bob = await connect(client, "alice"), await connect(client, "bob")
            r = await client.patch("/internal/logs/subscribe", json={"clientId": "alice", "enabled": True})
            assert r.status == 200
            test_log.warning("marker-sub")
            data = await next_of(alice, "logs")
            assert set(data) == {"entries", "size"}
            assert [e["m"] for e in data["entries"]] == ["marker-sub\n"]
            assert data["size"] is None or set(data["size"]) == {"cols", "rows"}
            datetime.fromisoformat(data["entries"][0]["t"])
            await none_of(bob, "logs")
            # a batch: lines logged together arrive in one message, in order; the size only when it changed
            for i in range(3):
                test_log.warning("batch %d", i)
            data = await next_of(alice, "logs")
            assert [e["m"] for e in data["entries"]] == ["batch 0\n", "batch 1\n", "batch 2\n"]
            assert data["size"] is None
            r = await client.patch("/internal/logs/subscribe", json={"clientId": "alice", "enabled": False})
            assert r.status == 200
            test_log.warning("after unsubscribing")
            await none_of(alice, "logs")
            assert (await client.patch("/internal/logs/subscribe", data=b"{")).status == 400
    run(go())


def test_a_subscriber_that_left_is_forgotten(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws = await connect(client, "carol")
            await client.patch("/internal/logs/subscribe", json={"clientId": "carol", "enabled": True})
            await ws.close()
            await asyncio.sleep(0.1)
            test_log.warning("nobody listens")
            await asyncio.sleep(0.3)
            assert client.app[logs_key()].terminal.subscriptions == set()
    run(go())


def logs_key():
    from latentgraph.server.logs import INTERNAL

    return INTERNAL


def test_got_prompt_and_prompt_executed_are_logged(tmp_path, shared, caplog):
    caplog.set_level(logging.INFO)
    prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
              "save": {"class_type": "SaveImage", "inputs": {"images": ["img", 0], "filename_prefix": "p"}}}

    async def go():
        async with served(tmp_path, shared) as client:
            ws = await connect(client, "dave")
            r = await client.post("/prompt", json={"prompt": prompt, "client_id": "dave"})
            await until_done(ws, (await r.json())["prompt_id"])
            for _ in range(50):
                raw = await (await client.get("/internal/logs/raw")).json()
                lines = [e["m"] for e in raw["entries"]]
                if any(m.startswith("Prompt executed in ") for m in lines):
                    break
                await asyncio.sleep(0.05)
            assert "got prompt\n" in lines
            (done,) = [m for m in lines if m.startswith("Prompt executed in ")]
            assert done.endswith(" seconds\n")
    run(go())
    assert elapsed(1.234) == "1.23 seconds" and elapsed(3723) == "01:02:03"


# -- folders and files -------------------------------------------------------------------------
def test_internal_files_and_folder_paths(tmp_path, shared):
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "deep.png").write_bytes(b"x")  # not listed: only the folder's own files
    for i, name in enumerate(["old.png", "newest.png", "middle.txt"]):
        (out / name).write_bytes(b"x")
        stamp = time.time() - 1000 + {"old.png": 0, "newest.png": 500, "middle.txt": 200}[name]
        os.utime(out / name, (stamp, stamp))

    async def go():
        async with served(tmp_path, shared) as client:
            r = await client.get("/internal/files/output")
            assert r.status == 200 and await r.json() == ["newest.png", "middle.txt", "old.png"]
            assert await (await client.get("/internal/files/temp")).json() == []  # no folder yet
            r = await client.get("/internal/files/bogus")
            assert r.status == 400 and await r.json() == {"error": "Invalid directory type"}
            assert (await client.get("/api/internal/files/output")).status == 404
            r = await client.get("/internal/folder_paths")
            paths = await r.json()
            assert str(tmp_path / "models" / "checkpoints") in paths["checkpoints"]
            assert str(tmp_path / "models" / "clip") in paths["text_encoders"]
            assert str(tmp_path / "models" / "t2i_adapter") in paths["controlnet"]
            assert all(isinstance(v, list) and all(isinstance(p, str) for p in v) for v in paths.values())
            assert "custom_nodes" not in paths
    run(go())


# -- progress_state from the executor ---------------------------------------------------------
def states(events: list, node_id: str) -> list[tuple]:
    """``node_id``'s (state, value, max) in each progress_state it appears in."""
    return [(n[node_id]["state"], n[node_id]["value"], n[node_id]["max"])
            for kind, data in events if kind == "progress_state" for n in [data["nodes"]] if node_id in n]


def slow_workflow() -> Workflow:
    wf = Workflow()
    n = wf.add("n", "Number", value=1)
    s = wf.add("slow", "SlowCount", x=n, steps=3)
    wf.add("show", "Show", value=s)
    return wf


def test_progress_state_follows_each_node(executor):
    events: list = []
    res = executor.run(slow_workflow(), prompt_id="p1", listener=lambda k, d: events.append((k, d)))
    assert sorted(res.executed) == ["n", "show", "slow"]
    assert states(events, "slow") == [("running", 0, 1), ("running", 1, 3), ("running", 2, 3), ("running", 3, 3),
                                      ("finished", 3, 3), ("finished", 3, 3), ("finished", 3, 3)]
    assert states(events, "n")[:2] == [("running", 0, 1), ("finished", 1, 1)]
    messages = [d for k, d in events if k == "progress_state"]
    first = messages[0]
    assert first == {"prompt_id": "p1", "nodes": {"n": {
        "value": 0, "max": 1, "state": "running", "node_id": "n", "prompt_id": "p1", "display_node_id": "n",
        "parent_node_id": None, "real_node_id": "n"}}}
    # a node that finished stays in every later message, finished; pending ones are never listed
    seen_n_done = False
    for data in messages:
        if seen_n_done:
            assert data["nodes"]["n"]["state"] == "finished"
        seen_n_done = seen_n_done or data["nodes"].get("n", {}).get("state") == "finished"
    assert list(messages[0]["nodes"]) == ["n"]
    last = messages[-1]["nodes"]
    assert set(last) == {"n", "slow", "show"}
    assert all(s["state"] == "finished" and s["value"] == s["max"] for s in last.values())
    # each step's state goes out before the step's progress message, as ComfyUI's
    kinds = [k for k, _ in events]
    for i, (kind, data) in enumerate(events):
        if kind == "progress":
            assert kinds[i - 1] == "progress_state"
            assert events[i - 1][1]["nodes"][data["node"]]["value"] == data["value"]
    # the state at a node's start goes out before its "executing"
    start = kinds.index("executing")
    assert kinds[start - 1] == "progress_state"


def test_a_repeated_report_is_not_sent_again(toy, env):
    registry, _ = toy

    @node(outputs=["INT"])
    def Stutter(x: Annotated[int, Int(0, min=0, max=10)], ctx: NodeContext) -> int:
        for value in (1, 1, 1, 2, 2):
            ctx.progress(value, 2)
        return x

    registry.register(Stutter)
    wf = Workflow()
    wf.add("st", "Stutter", x=1)
    events: list = []
    Executor(registry, env).run(wf, targets=["st"], listener=lambda k, d: events.append((k, d)))
    assert states(events, "st") == [("running", 0, 1), ("running", 1, 2), ("running", 2, 2), ("finished", 2, 2)]
    assert [k for k, _ in events].count("progress") == 5  # the progress messages themselves all go out


def test_a_cached_rerun_reports_finished_nodes(executor):
    wf = slow_workflow()
    executor.run(wf)
    events: list = []
    res = executor.run(wf, prompt_id="p2", listener=lambda k, d: events.append((k, d)))
    assert res.executed == []
    messages = [d["nodes"] for k, d in events if k == "progress_state"]
    assert messages, "cached nodes are reported finished"
    assert all(s["state"] == "finished" and s["value"] == s["max"] for m in messages for s in m.values())
    # as ComfyUI: only the nodes the run reached (the target, whose result is cached: its sources
    # are never asked for); the others are in execution_cached
    assert set(messages[-1]) == {"show"} and messages[-1]["show"]["prompt_id"] == "p2"
    cached = next(d for k, d in events if k == "execution_cached")
    assert sorted(cached["nodes"]) == ["n", "show", "slow"]


class _AddN(AddN):
    """test_lazy_expand's AddN (a chain of AddOne nodes) as an output node, so a prompt can target it."""

    OUTPUT_NODE = True


def test_expanded_nodes_name_their_parent_and_the_prompts_node(env):
    registry = NodeRegistry()
    for cls in (Number, AddOne, _AddN):
        registry.register(node_def(cls.__name__, cls, None, pack="flow", source="tests"))
    events: list = []
    prompt = {"num": {"class_type": "Number", "inputs": {"value": 1}},
              "addn": {"class_type": "_AddN", "inputs": {"value": ["num", 0], "n": 2}}}
    res = Executor(registry, env).run(prompt, listener=lambda k, d: events.append((k, d)))
    assert res.get("addn") == 3
    last = [d["nodes"] for k, d in events if k == "progress_state"][-1]
    added = [n for n in last if n not in ("num", "addn")]
    assert len(added) == 2
    for n in added:
        assert last[n]["parent_node_id"] == "addn" and last[n]["real_node_id"] == "addn"
        assert last[n]["display_node_id"] == "addn" and last[n]["state"] == "finished"
    # the expanding node runs until the nodes it added have: it finishes last
    assert states(events, "addn")[-1] == ("finished", 1, 1)
    finished_order = []
    for k, d in events:
        if k == "progress_state":
            for n, s in d["nodes"].items():
                if s["state"] == "finished" and n not in finished_order:
                    finished_order.append(n)
    assert finished_order[-1] == "addn"


def test_progress_text_is_an_event_of_the_node(env):
    registry = NodeRegistry()
    registry.register(Chatty)
    events: list = []
    Executor(registry, env).run({"c": {"class_type": "Chatty", "inputs": {"value": 4}}}, prompt_id="p3",
                                targets=["c"], listener=lambda k, d: events.append((k, d)))
    assert ("progress_text", {"node": "c", "text": "counted 4 é", "prompt_id": "p3"}) in events
    assert progress_text_frame("c", "hi") == struct.pack(">II", 3, 1) + b"c" + b"hi"


# -- over the websocket ------------------------------------------------------------------------
def test_a_ksampler_run_sends_progress_state_to_the_queuing_client(tmp_path, shared):
    prompt = json.loads(json.dumps(TXT2IMG))
    prompt["sampler"]["inputs"].update(steps=3, seed=5)
    prompt["save"]["inputs"]["filename_prefix"] = "ps"
    prompt["chat"] = {"class_type": "Chatty", "inputs": {"value": 7}}

    async def go():
        async with served(tmp_path, shared) as client:
            alice, bob = await connect(client, "alice"), await connect(client, "bob")
            r = await client.post("/prompt", json={"prompt": prompt, "client_id": "alice",
                                                   "partial_execution_targets": ["save", "chat"]})
            assert r.status == 200, await r.text()
            pid = (await r.json())["prompt_id"]
            texts, frames = await until_done(alice, pid)
            messages = [m["data"] for m in texts if m["type"] == "progress_state"]
            assert messages and all(m["prompt_id"] == pid for m in messages)
            sampler = [(m["nodes"]["sampler"]["state"], m["nodes"]["sampler"]["value"], m["nodes"]["sampler"]["max"])
                       for m in messages if "sampler" in m["nodes"]]
            assert sampler[:5] == [("running", 0, 1), ("running", 1, 3), ("running", 2, 3), ("running", 3, 3),
                                   ("finished", 3, 3)]
            last = messages[-1]["nodes"]
            assert set(last) == set(prompt) and all(s["state"] == "finished" for s in last.values())
            # the node's text as ComfyUI's binary frame 3 (previews are frames 1)
            texts_frames = [f for f in frames if struct.unpack(">I", f[:4])[0] == 3]
            assert texts_frames == [progress_text_frame("chat", "counted 7 é")]
            await none_of(bob, "progress_state")
    run(go())
