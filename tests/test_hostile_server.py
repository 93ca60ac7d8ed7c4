"""Hostile clients against the server (issue 14, section 4): bad /prompt fields, out-of-range
query parameters, upload names that are no file name, symlinks out of the folders, a history
that cannot be written, a websocket that stops reading, a crashing sender, a kill -9 with
prompts queued, and files written atomically. Each case checks the exact error and that nothing
outside the allowed folders changed."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import torch
from aiohttp import FormData
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from latentgraph.graph import Environment
from latentgraph.graph.fileio import write_atomic
from latentgraph.nodes.imageio import PNG_METADATA_BUDGET, save_images
from latentgraph.server import SERVER, create_app, wait_until_listening
from latentgraph.server.journal import JOURNAL_FILE, Journal
from latentgraph.server.queue import History, PromptQueue

ROOT = Path(__file__).resolve().parents[1]
CHAIN = {"1": {"class_type": "Number", "inputs": {"value": 2}},
         "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}


def snapshot(root: Path) -> dict:
    """Every file under ``root`` with its bytes: compared before and after to prove nothing changed."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@asynccontextmanager
async def served(tmp: Path, toy, worker: bool = True):
    registry, _ = toy
    env = Environment(output_dir=tmp / "output", input_dir=tmp / "input", temp_dir=tmp / "temp",
                      models_dir=tmp / "models", device="cpu")
    for folder in ("output", "input", "temp"):
        (tmp / folder).mkdir(exist_ok=True)
    app = create_app(registry, env, services={}, user_dir=tmp / "user", frontend="none")
    if not worker:
        app[SERVER].worker = lambda: None
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def error_of(resp) -> str:
    assert resp.status == 400, await resp.text()
    body = await resp.json()
    return body["error"]["message"]


# -- /prompt fields ---------------------------------------------------------------------------
PROMPT_CASES = [
    ({"client_id": 5}, "client_id must be a string, not int"),
    ({"client_id": {"a": 1}}, "client_id must be a string, not dict"),
    ({"client_id": "x" * 129}, "client_id is longer than 128 characters (MAX_ID_LENGTH)"),
    ({"extra_data": {"client_id": ["a"]}}, "extra_data.client_id must be a string, not list"),
    ({"number": "3"}, "number must be a number, not str"),
    ({"number": True}, "number must be a number, not bool"),
    ({"number": 1e300}, "number must be a finite number within ±2**53, not 1e+300"),
    ({"front": "yes"}, "front must be true or false, not str"),
    ({"prompt_id": "../escape"}, "prompt_id '../escape' may hold only letters, digits, '-', '_' and '.', and must "
                                 "not start with '.' (it names the history file)"),
    ({"prompt_id": "."}, "prompt_id '.' may hold only letters, digits, '-', '_' and '.', and must not start with "
                         "'.' (it names the history file)"),
    ({"prompt_id": "a/b"}, "prompt_id 'a/b' may hold only letters, digits, '-', '_' and '.', and must not start "
                           "with '.' (it names the history file)"),
    ({"prompt_id": 7}, "prompt_id must be a string, not int"),
    ({"prompt_id": "p" * 129}, "prompt_id is longer than 128 characters (MAX_ID_LENGTH)"),
    ({"extra_data": []}, "extra_data must be an object"),
    ({"extra_data": {"extra_pnginfo": "text"}}, "extra_data.extra_pnginfo must be an object"),
    ({"partial_execution_targets": [1]}, "partial_execution_targets must be a list of at most 10000 node ids"),
]
RAW_CASES = [
    (b'{"prompt": {}, "number": NaN}', "The request body is not acceptable JSON: NaN is not JSON (numbers must be finite)"),
    (b'{"prompt": {}, "number": 1e999}', "The request body is not acceptable JSON: numbers must be finite; '1e999' is not"),
    (b'{"prompt": {}, "number": -Infinity}',
     "The request body is not acceptable JSON: -Infinity is not JSON (numbers must be finite)"),
    (b"[" * 100_000 + b"]" * 100_000,
     "The request body is not acceptable JSON: the JSON is nested more than 64 levels deep (MAX_JSON_DEPTH)"),
    (b'{"prompt": ' + b'{"a":' * 70 + b"1" + b"}" * 71,
     "The request body is not acceptable JSON: the JSON is nested more than 64 levels deep (MAX_JSON_DEPTH)"),
]


def test_bad_prompt_fields_are_refused_with_400_and_nothing_is_queued(tmp_path, toy):
    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            srv = client.server.app[SERVER]
            for fields, message in PROMPT_CASES:
                resp = await client.post("/prompt", json={"prompt": CHAIN, **fields})
                assert await error_of(resp) == message, fields
            for raw, message in RAW_CASES:
                resp = await client.post("/prompt", data=raw, headers={"Content-Type": "application/json"})
                assert await error_of(resp) == message, raw[:40]
            assert srv.queue.remaining() == 0
            # the same body with good fields is queued, with its prompt_id and number
            resp = await client.post("/prompt", json={"prompt": CHAIN, "prompt_id": "good-1.a", "number": 5,
                                                      "client_id": "c1", "front": False})
            assert resp.status == 200
            assert await resp.json() == {"prompt_id": "good-1.a", "number": 5.0, "node_errors": {}}
            pending = srv.queue.pending()
            assert [(i.prompt_id, i.number, i.extra_data["client_id"]) for i in pending] == [("good-1.a", 5.0, "c1")]
    run(go())
    assert not (tmp_path / "escape.json").exists() and not (tmp_path / "user" / "escape.json").exists()


# -- query parameters -------------------------------------------------------------------------
def test_query_parameters_out_of_range_get_400_naming_the_parameter(tmp_path, toy):
    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            Image.new("RGBA", (4, 4), (1, 2, 3, 4)).save(tmp_path / "output" / "pic.png")
            view = {"preview=webp;999999": "preview quality must be an integer from 1 to 100, not '999999'",
                    "preview=webp;0": "preview quality must be an integer from 1 to 100, not '0'",
                    "preview=webp;²": "preview quality must be an integer from 1 to 100, not '²'",
                    "preview=gif;50": "preview format must be one of webp, jpeg, not 'gif'",
                    "channel=x": "channel must be one of rgba, rgb, a, not 'x'"}
            for query, message in view.items():
                resp = await client.get(f"/view?filename=pic.png&{query}")
                assert resp.status == 400 and await resp.text() == message, query
            resp = await client.get("/view?filename=pic.png&preview=webp;100")
            assert resp.status == 200 and resp.content_type == "image/webp"
            history = {"max_items=-1": "max_items must be between 0 and 10000, not -1",
                       "max_items=abc": "max_items must be an integer, not 'abc'",
                       "max_items=" + "9" * 30: "max_items must be an integer, not '" + "9" * 30 + "'",
                       "offset=-2": "offset must be between -1 and 10000, not -2"}
            for query, message in history.items():
                resp = await client.get(f"/history?{query}")
                assert await error_of(resp) == message, query
            jobs = {"limit=0": "limit must be between 1 and 1000000, not 0",
                    "limit=" + "1" * 5000: "limit must be an integer, not '" + "1" * 40 + "'",
                    "offset=10000000": "offset must be between -1000000 and 1000000, not 10000000",
                    "offset=1.5": "offset must be an integer, not '1.5'"}
            for query, message in jobs.items():
                resp = await client.get(f"/api/jobs?{query}")
                assert resp.status == 400 and (await resp.json())["error"] == message, query[:40]
            page = await (await client.get("/api/jobs?offset=-5&limit=1000000")).json()
            assert page["pagination"] == {"offset": 0, "limit": 1000000, "total": 0, "has_more": False}
            resp = await client.get("/ws?clientId=" + "x" * 200)
            assert await error_of(resp) == "clientId is longer than 128 characters (MAX_ID_LENGTH)"
            resp = await client.post("/interrupt", json={"prompt_id": 5})
            assert await error_of(resp) == "prompt_id must be a string, not int"
            resp = await client.post("/history", json={"delete": [{"a": 1}]})
            assert await error_of(resp) == "delete must be a list of at most 10000 prompt ids"
    run(go())


# -- uploads ----------------------------------------------------------------------------------
def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(filename: str, data: bytes) -> tuple[bytes, dict]:
    """A multipart body with the file name exactly as given (aiohttp's FormData would quote it)."""
    head = (f'--B\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + b"\r\n--B--\r\n", {"Content-Type": "multipart/form-data; boundary=B"}


def test_upload_names_that_are_no_file_name_are_refused_inside_the_folder(tmp_path, toy):
    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            before = snapshot(tmp_path)
            names = {".": "filename '.' names no file", "a/.": None, "./": "filename './' names no file",
                     "x/..": "filename must not contain '..': 'x/..'", "..": "filename must not contain '..': '..'",
                     "  ": "filename '  ' names no file", "n" * 300: "filename is longer than 255 bytes (MAX_NAME_BYTES)"}
            for name, message in names.items():
                body, headers = _multipart(name, _png())
                resp = await client.post("/upload/image", data=body, headers=headers)
                if message is None:  # 'a/.' is the file 'a' once normalised: stored inside input
                    assert resp.status == 200 and (await resp.json())["name"] == "a"
                    continue
                assert resp.status == 400 and await resp.text() == message, name
            form = FormData()
            form.add_field("image", _png(), filename="ok.png", content_type="image/png")
            form.add_field("subfolder", b"sub", filename="sub.txt")  # a file where text belongs
            resp = await client.post("/upload/image", data=form)
            assert resp.status == 400
            assert await resp.text() == "type, subfolder and overwrite must be text fields, not files"
            after = snapshot(tmp_path)
            new = {k for k in after if k not in before and not k.startswith("user/")}
            assert new == {"input/a"}  # only the one good upload, inside the input folder
            assert not [p for p in tmp_path.iterdir() if p.name.startswith("input ")]
    run(go())


def test_view_refuses_a_symlink_whose_target_is_outside_the_folder(tmp_path, toy):
    secret = tmp_path / "secret.txt"
    secret.write_text("private")

    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            (tmp_path / "output" / "leak.txt").symlink_to(secret)
            (tmp_path / "output" / "inside.txt").write_text("public")
            (tmp_path / "output" / "alias.txt").symlink_to(tmp_path / "output" / "inside.txt")
            (tmp_path / "input" / "mask.png").symlink_to(tmp_path / "secret.txt")
            resp = await client.get("/view?filename=leak.txt")
            assert resp.status == 403 and await resp.text() == "leak.txt resolves outside the output folder"
            resp = await client.get("/view?filename=alias.txt")
            assert resp.status == 200 and await resp.text() == "public"
            form = FormData()
            form.add_field("image", _png(), filename="m.png", content_type="image/png")
            form.add_field("original_ref", json.dumps({"filename": "mask.png", "type": "input"}))
            resp = await client.post("/upload/mask", data=form)
            assert resp.status == 403 and await resp.text() == "mask.png resolves outside the input folder"
    run(go())
    assert secret.read_text() == "private"


# -- history that cannot be written -----------------------------------------------------------
def test_a_prompt_whose_history_cannot_be_written_still_leaves_the_queue(tmp_path, toy, caplog):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "history").write_text("a file where the history folder should be")

    async def go():
        async with served(tmp_path, toy) as client:
            srv = client.server.app[SERVER]
            resp = await client.post("/prompt", json={"prompt": CHAIN, "prompt_id": "h1"})
            assert resp.status == 200
            for _ in range(200):
                if srv.queue.remaining() == 0 and (await (await client.get("/history/h1")).json()):
                    break
                await asyncio.sleep(0.05)
            assert srv.queue.remaining() == 0
            entry = (await (await client.get("/history/h1")).json())["h1"]
            assert entry["status"]["status_str"] == "success" and entry["outputs"]["2"]["value"] == [2]
            kind, data = entry["status"]["messages"][-1]
            assert kind == "history_not_saved" and data["prompt_id"] == "h1"
            assert data["message"].startswith("the history entry could not be written, it is lost at the next "
                                              f"restart: {tmp_path}/user/history/h1.json: ")
    with caplog.at_level(logging.ERROR, logger="latentgraph.server"):
        run(go())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert errors[0].startswith(f"cannot write the history entry of prompt h1: {tmp_path}/user/history/h1.json: ")


# -- websockets -------------------------------------------------------------------------------
def _raw_websocket(port: int, sid: str) -> socket.socket:
    """A websocket client that completes the handshake and then never reads again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall((f"GET /ws?clientId={sid} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def test_a_websocket_that_stops_reading_is_dropped_and_others_keep_their_messages(tmp_path, toy, caplog):
    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            srv = client.server.app[SERVER]
            srv.socket_queue, srv.send_timeout = 8, 2.0
            stuck = await asyncio.to_thread(_raw_websocket, client.server.port, "stuck")
            good = await client.ws_connect("/ws?clientId=good")
            assert (await good.receive_json(timeout=10))["type"] == "status"
            for _ in range(100):
                if "stuck" in srv.sockets:
                    break
                await asyncio.sleep(0.02)
            payload = b"\x00\x00\x00\x01" + os.urandom(256 * 1024)
            got = 0
            for i in range(60):  # 15 MiB to each socket: far more than the stuck one's buffers hold
                srv.send_binary(payload, None)
                msg = await good.receive(timeout=30)
                assert msg.data == payload
                got += 1
            srv.send("done", {"n": got})
            while True:
                msg = await good.receive_json(timeout=30)
                if msg["type"] == "done":
                    break
            for _ in range(200):
                if "stuck" not in srv.sockets:
                    break
                await asyncio.sleep(0.05)
            assert "stuck" not in srv.sockets and "good" in srv.sockets
            stuck.close()
            await good.close()
            return got
    with caplog.at_level(logging.WARNING, logger="latentgraph.server"):
        assert run(go()) == 60
    dropped = [r.getMessage() for r in caplog.records if "dropping websocket stuck" in r.getMessage()]
    assert len(dropped) == 1 and "(not reading)" in dropped[0]


def test_the_sender_restarts_after_a_crash_and_logs_it(tmp_path, toy, caplog):
    async def go():
        async with served(tmp_path, toy, worker=False) as client:
            srv = client.server.app[SERVER]
            ws = await client.ws_connect("/ws?clientId=w")
            assert (await ws.receive_json(timeout=10))["type"] == "status"
            srv._post(("bogus-kind-that-breaks-unpacking",))  # kills the publisher loop
            srv.send("after", {"ok": 1}, "w")
            msg = await ws.receive_json(timeout=10)
            await ws.close()
            return msg
    with caplog.at_level(logging.ERROR, logger="latentgraph.server"):
        assert run(go()) == {"type": "after", "data": {"ok": 1}}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "the websocket sender crashed; restarting it"]


# -- crash safety: the queue journal ----------------------------------------------------------
def test_the_journal_restores_pending_prompts_in_order_and_reports_the_running_one(tmp_path):
    path = tmp_path / "user" / JOURNAL_FILE
    q = PromptQueue(Journal(path))
    for pid in ("a", "b", "c"):
        q.put(q.next_number(), pid, {"n": {"class_type": pid}}, {"client_id": "me", "auth_token_comfy_org": "k"},
              ["n"])
    q.put(q.next_number(front=True), "front", {}, {}, [])  # number -3: runs first
    assert q.get(timeout=1).prompt_id == "front"
    running = q.get(timeout=1)
    assert running.prompt_id == "a"
    q.delete(["c"])  # deleted before the crash: stays deleted
    # "kill -9": the queue object is dropped without done(); a new one reads the same file
    history = History(tmp_path / "user" / "history")
    again = PromptQueue(Journal(path))
    stopped = again.restore(lambda item: history.stopped(item, "the server stopped"))
    assert [i.prompt_id for i in stopped] == ["front", "a"]
    assert [(i.prompt_id, i.number, i.prompt) for i in again.pending()] == [("b", 1.0, {"n": {"class_type": "b"}})]
    assert again.pending()[0].extra_data == {"client_id": "me"}  # credentials never reach the disk
    assert b"auth_token" not in path.read_bytes()
    assert again.next_number() == 2  # new prompts come after the restored ones ("c" was deleted)
    entry = history.get("a")
    assert entry["status"]["status_str"] == "error"
    assert entry["status"]["messages"][1][1]["exception_message"] == "the server stopped"
    assert (tmp_path / "user" / "history" / "a.json").is_file()
    third = PromptQueue(Journal(path))  # the stopped ones are gone from the journal
    assert third.restore() == [] and [i.prompt_id for i in third.pending()] == ["b"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLEEP_NODE = '''
import time


class Nap:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 600.0}),
                             "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "nap"
    OUTPUT_NODE = True
    CATEGORY = "test"

    def nap(self, seconds, tag):
        time.sleep(seconds)
        return {"ui": {"tag": [tag]}}


NODE_CLASS_MAPPINGS = {"Nap": Nap}
'''


def _serve(tmp: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "latentgraph", "serve", "--port", str(port), "--frontend", "none",
           "--device", "cpu", "--custom-nodes", str(tmp / "nodes"), "--user-dir", str(tmp / "user")]
    for folder in ("output", "input", "temp", "models"):
        cmd += [f"--{folder}-dir", str(tmp / folder)]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_until_listening(port, timeout=120, process=proc)
    return proc


def _http(port: int, method: str, path: str, body=None):
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read() or b"null")


def test_kill_9_with_a_prompt_running_and_others_pending_then_restart(tmp_path):
    (tmp_path / "nodes").mkdir()
    (tmp_path / "nodes" / "nap.py").write_text(SLEEP_NODE)
    port = _free_port()
    proc = _serve(tmp_path, port)
    try:
        for tag in ("first", "second", "third"):
            _http(port, "POST", "/prompt", {"prompt": {"n": {"class_type": "Nap", "inputs": {"seconds": 120, "tag": tag}}},
                                            "prompt_id": tag, "client_id": "c"})
        for _ in range(300):
            if [i[1] for i in _http(port, "GET", "/queue")["queue_running"]] == ["first"]:
                break
            time.sleep(0.1)
        proc.kill()  # SIGKILL: no cleanup runs
        proc.wait(30)
        proc = _serve(tmp_path, port)
        queue = _http(port, "GET", "/queue")
        running = [(i[0], i[1]) for i in queue["queue_running"]]
        pending = [(i[0], i[1]) for i in queue["queue_pending"]]
        assert running + pending == [(1, "second"), (2, "third")]  # re-queued in order, same numbers
        entry = _http(port, "GET", "/history/first")["first"]
        assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
        error = entry["status"]["messages"][-1]
        assert error[0] == "execution_error" and error[1]["exception_type"] == "ServerStopped"
        assert error[1]["exception_message"].startswith("the server stopped while this prompt was running")
        assert _http(port, "POST", "/prompt", {"prompt": {"n": {"class_type": "Nap", "inputs": {"seconds": 0}}}})[
            "number"] == 3
    finally:
        proc.kill()
        proc.wait(30)


# -- atomic files and the PNG metadata budget ---------------------------------------------------
def test_write_atomic_never_leaves_a_truncated_file_or_a_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "a.bin"
    write_atomic(target, b"old contents")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents" and sorted(p.name for p in target.parent.iterdir()) == ["a.bin"]
    link = tmp_path / "out" / "link.bin"
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"keep")
    link.symlink_to(outside)
    write_atomic(link, b"replaced")  # the link is replaced, its target untouched
    assert outside.read_bytes() == b"keep" and not link.is_symlink() and link.read_bytes() == b"replaced"


def test_png_metadata_over_its_budget_is_refused_before_any_file(tmp_path):
    images = torch.zeros(2, 4, 4, 3)
    huge = {"workflow": {"blob": "x" * (PNG_METADATA_BUDGET + 10)}}
    with pytest.raises(ValueError) as err:
        save_images(images, tmp_path, "big", "output", 1, {"1": {}}, huge)
    assert str(err.value) == (f"the PNG metadata is over its budget of {PNG_METADATA_BUDGET:,} bytes "
                              f"(PNG_METADATA_BUDGET) at the 'workflow' text chunk: the prompt and extra_pnginfo are "
                              f"written into every image, so keep large values out of extra_pnginfo")
    assert list(tmp_path.iterdir()) == []
    saved = save_images(images, tmp_path, "ok", "output", 1, {"1": {"class_type": "X"}}, {"workflow": {"a": 1}})
    assert [s["filename"] for s in saved] == ["ok_00001_.png", "ok_00002_.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok_00001_.png", "ok_00002_.png"]  # no temp files left
    with Image.open(tmp_path / "ok_00001_.png") as img:
        assert img.text == {"prompt": '{"1": {"class_type": "X"}}', "workflow": '{"a": 1}'}
