"""The ComfyUI-compatible server through aiohttp's test client and real websocket clients:
message order and fields, errors, interrupts, queue order, per-client delivery, uploads and
their refusals, /view, the origin check, history across a restart."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from latentgraph.graph import IMAGE, Environment, node
from latentgraph.nodes import create_registry, create_services
from latentgraph.server import create_app

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())


@node(outputs=[IMAGE])
def Explode(image: Annotated[torch.Tensor, IMAGE]) -> torch.Tensor:
    """Fails while running, for the worker-survives test."""
    raise RuntimeError("boom")


@pytest.fixture(scope="module")
def shared():
    """One registry and one model cache for every app of this module (the demo model loads once)."""
    registry = create_registry()
    registry.register(Explode)
    return registry, create_services(Environment(device="cpu"))


@asynccontextmanager
async def served(tmp: Path, shared, **options):
    registry, services = shared
    env = Environment(output_dir=tmp / "output", input_dir=tmp / "input", temp_dir=tmp / "temp",
                      models_dir=tmp / "models", device="cpu")
    options.setdefault("frontend", "none")
    app = create_app(registry, env, services=services, user_dir=tmp / "user", **options)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def txt2img(steps: int = 3, seed: int = 1, prefix: str = "t") -> dict:
    prompt = json.loads(json.dumps(TXT2IMG))
    prompt["sampler"]["inputs"].update(steps=steps, seed=seed)
    prompt["save"]["inputs"]["filename_prefix"] = prefix
    return prompt


FAILING = {"img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
           "boom": {"class_type": "Explode", "inputs": {"image": ["img", 0]}},
           "save": {"class_type": "SaveImage", "inputs": {"images": ["boom", 0]}}}


def cheap(prefix: str, colour: int = 0) -> dict:
    return {"img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": colour}},
            "save": {"class_type": "SaveImage", "inputs": {"images": ["img", 0], "filename_prefix": prefix}}}


async def connect(client, sid: str | None = None, flags: dict | None = None):
    ws = await client.ws_connect("/ws" + (f"?clientId={sid}" if sid else ""))
    first = await ws.receive_json(timeout=10)
    if flags is not None:
        await ws.send_json({"type": "feature_flags", "data": flags})
        reply = await ws.receive_json(timeout=10)
        assert reply["type"] == "feature_flags" and reply["data"]["supports_preview_metadata"] is True
    return ws, first


async def until_done(ws, prompt_id: str) -> tuple[list[dict], list[bytes]]:
    """Messages up to `executing` with node null for this prompt (JSON, binary)."""
    texts, frames = [], []
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == WSMsgType.BINARY:
            frames.append(msg.data)
            continue
        assert msg.type == WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        texts.append(data)
        if data["type"] == "executing" and data["data"]["node"] is None and data["data"]["prompt_id"] == prompt_id:
            return texts, frames


async def start_long(client, ws, sid: str, seed: int) -> str:
    """Queue a 5,000-step prompt and return its id once sampling is under way."""
    r = await client.post("/prompt", json={"prompt": txt2img(steps=5000, seed=seed), "client_id": sid})
    pid = (await r.json())["prompt_id"]
    while True:
        msg = await ws.receive(timeout=60)
        if msg.type == WSMsgType.TEXT and json.loads(msg.data)["type"] == "progress":
            return pid


def test_one_prompt_gets_comfyuis_messages_in_order(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws, first = await connect(client, "alice", flags={"supports_preview_metadata": False})
            assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "alice"}}
            r = await client.post("/prompt", json={"prompt": txt2img(), "client_id": "alice"})
            assert r.status == 200
            body = await r.json()
            assert set(body) == {"prompt_id", "number", "node_errors"} and body["number"] == 0
            assert body["node_errors"] == {}
            pid = body["prompt_id"]
            texts, frames = await until_done(ws, pid)
            kinds = [m["type"] for m in texts]
            core = [k for k in kinds if k not in ("status", "progress_state")]  # progress_state: test_logs_progress
            assert core[:2] == ["execution_start", "execution_cached"]
            assert core[-3:] == ["executed", "execution_success", "executing"]
            executing = [m["data"]["node"] for m in texts if m["type"] == "executing"]
            assert sorted(executing[:-1]) == sorted(TXT2IMG) and executing[-1] is None
            assert executing.index("ckpt") < executing.index("positive") < executing.index("sampler")
            assert executing[-4:-1] == ["sampler", "decode", "save"]
            progress = [m["data"] for m in texts if m["type"] == "progress"]
            assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
                (1, 3, "sampler", pid), (2, 3, "sampler", pid), (3, 3, "sampler", pid)]
            # a JPEG preview per step, in ComfyUI's frame: u32 type 1, u32 format 1 (JPEG), bytes
            assert len(frames) == 3
            assert all(struct.unpack(">II", f[:8]) == (1, 1) and f[8:10] == b"\xff\xd8" for f in frames)
            executed = next(m["data"] for m in texts if m["type"] == "executed")
            assert executed["node"] == "save" and executed["display_node"] == "save" and executed["prompt_id"] == pid
            (image,) = executed["output"]["images"]
            assert image == {"filename": "t_00001_.png", "subfolder": "", "type": "output"}
            start = next(m["data"] for m in texts if m["type"] == "execution_start")
            assert start["prompt_id"] == pid and isinstance(start["timestamp"], int)
            # the status broadcast after the prompt comes before the final `executing`
            assert kinds[-2:] == ["status", "executing"]
            assert texts[-2]["data"] == {"status": {"exec_info": {"queue_remaining": 0}}}

            history = await (await client.get(f"/history/{pid}")).json()
            entry = history[pid]
            assert entry["outputs"] == {"save": executed["output"]}
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                  "execution_success"]
            assert entry["prompt"][1] == pid and entry["prompt"][3]["client_id"] == "alice"
            assert entry["prompt"][4] == ["save"]
            # /view returns the saved file's bytes, also under /api
            for prefix in ("", "/api"):
                r = await client.get(prefix + "/view", params={"filename": image["filename"], "type": "output"})
                assert r.status == 200
                assert await r.read() == (tmp_path / "output" / image["filename"]).read_bytes()
            # a second identical prompt is served from the cache: no progress, same output replayed
            r = await client.post("/api/prompt", json={"prompt": txt2img(), "client_id": "alice"})
            pid2 = (await r.json())["prompt_id"]
            texts, frames = await until_done(ws, pid2)
            cached = next(m["data"]["nodes"] for m in texts if m["type"] == "execution_cached")
            assert sorted(cached) == sorted(TXT2IMG) and not frames
            assert [m["data"]["output"] for m in texts if m["type"] == "executed"] == [executed["output"]]
            await ws.close()

    run(go())


def test_previews_carry_metadata_for_clients_that_ask(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws, _ = await connect(client, "bob", flags={"supports_preview_metadata": True})
            r = await client.post("/prompt", json={"prompt": txt2img(steps=2, seed=5), "client_id": "bob"})
            pid = (await r.json())["prompt_id"]
            _, frames = await until_done(ws, pid)
            assert len(frames) == 2
            for frame in frames:
                kind, size = struct.unpack(">II", frame[:8])
                meta = json.loads(frame[8:8 + size])
                assert kind == 4 and meta["node_id"] == "sampler" and meta["prompt_id"] == pid
                assert meta["image_type"] == "image/jpeg" and frame[8 + size:8 + size + 2] == b"\xff\xd8"

    run(go())


def test_invalid_prompts_get_400_with_comfyuis_errors(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            bad = txt2img()
            bad["sampler"]["inputs"]["steps"] = 0
            bad["sampler"]["inputs"]["sampler_name"] = "nope"
            r = await client.post("/prompt", json={"prompt": bad})
            assert r.status == 400
            body = await r.json()
            assert body["error"]["type"] == "prompt_outputs_failed_validation"
            errors = body["node_errors"]["sampler"]
            assert errors["class_type"] == "KSampler" and errors["dependent_outputs"] == ["save"]
            assert sorted(e["type"] for e in errors["errors"]) == ["value_not_in_list", "value_smaller_than_min"]
            r = await client.post("/prompt", json={"client_id": "x"})
            assert r.status == 400 and (await r.json())["error"]["type"] == "no_prompt"
            r = await client.post("/prompt", data=b"{not json", headers={"Content-Type": "application/json"})
            assert r.status == 400 and (await r.json())["error"]["type"] == "invalid_json"
            r = await client.post("/prompt", json={"prompt": "text"})
            assert r.status == 400
            # an output that fails validation next to one that passes: the good one is queued
            mixed = {**cheap("ok"), "bad": {"class_type": "SaveImage", "inputs": {"images": ["missing", 0]}}}
            r = await client.post("/prompt", json={"prompt": mixed})
            body = await r.json()
            assert r.status == 200 and list(body["node_errors"]) == ["bad"]
            queue = await (await client.get("/queue")).json()
            assert len(queue["queue_running"]) + len(queue["queue_pending"]) <= 1

    run(go())


def test_interrupt_stops_sampling_and_the_worker_goes_on(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws, _ = await connect(client, "carol")
            pid = await start_long(client, ws, "carol", seed=9)
            running = await (await client.get("/history", params={"include_running": "1"})).json()
            assert running[pid]["status"]["status_str"] == "running"
            assert running[pid]["status"]["progress"]["node"] == "sampler"
            assert (await client.get(f"/history/{pid}")).status == 200 and await (await client.get(f"/history/{pid}")).json() == {}
            await client.post("/interrupt", json={"prompt_id": "someone-else"})  # not running: ignored
            await client.post("/interrupt", json={"prompt_id": pid})
            texts, _ = await until_done(ws, pid)
            stop = next(m["data"] for m in texts if m["type"] == "execution_interrupted")
            assert stop["prompt_id"] == pid and stop["node_id"] == "sampler" and stop["node_type"] == "KSampler"
            assert "ckpt" in stop["executed"]
            entry = (await (await client.get(f"/history/{pid}")).json())[pid]
            assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
            # a node that raises is an execution_error, and the next prompt still runs
            pid2 = (await (await client.post("/prompt", json={"prompt": FAILING, "client_id": "carol"})).json())["prompt_id"]
            texts, _ = await until_done(ws, pid2)
            err = next(m["data"] for m in texts if m["type"] == "execution_error")
            assert err["node_id"] == "boom" and err["exception_message"] == "boom"
            assert err["exception_type"] == "RuntimeError" and err["traceback"]
            pid3 = (await (await client.post("/prompt", json={"prompt": cheap("after"), "client_id": "carol"})).json())["prompt_id"]
            texts, _ = await until_done(ws, pid3)
            assert any(m["type"] == "execution_success" for m in texts)

    run(go())


def test_fifty_queued_prompts_run_in_order_with_their_history(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ids = []
            for i in range(50):
                r = await client.post("/prompt", json={"prompt": cheap(f"p{i:02d}", colour=i)})
                body = await r.json()
                assert body["number"] == i
                ids.append(body["prompt_id"])
            for _ in range(600):
                if (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0:
                    break
                await asyncio.sleep(0.05)
            history = await (await client.get("/history")).json()
            assert list(history) == ids
            for i, pid in enumerate(ids):
                (image,) = history[pid]["outputs"]["save"]["images"]
                assert image["filename"] == f"p{i:02d}_00001_.png"
                assert history[pid]["status"]["status_str"] == "success"
            assert list(await (await client.get("/history", params={"max_items": "3"})).json()) == ids[-3:]
            await client.post("/history", json={"delete": ids[:10]})
            assert list(await (await client.get("/history")).json()) == ids[10:]

    run(go())


def test_front_and_number_and_queue_deletion(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws, _ = await connect(client, "dave")
            blocker = await start_long(client, ws, "dave", seed=3)
            a = await (await client.post("/prompt", json={"prompt": cheap("a")})).json()
            b = await (await client.post("/prompt", json={"prompt": cheap("b"), "front": True})).json()
            c = await (await client.post("/prompt", json={"prompt": cheap("c"), "number": 0.5})).json()
            d = await (await client.post("/prompt", json={"prompt": cheap("d")})).json()
            assert (a["number"], b["number"], c["number"]) == (1, -2, 0.5)
            queue = await (await client.get("/queue")).json()
            assert [i[1] for i in queue["queue_running"]] == [blocker]
            assert [i[1] for i in queue["queue_pending"]] == [b["prompt_id"], c["prompt_id"], a["prompt_id"],
                                                            d["prompt_id"]]
            assert queue["queue_pending"][0][0] == -2 and queue["queue_pending"][0][4] == ["save"]
            await client.post("/queue", json={"delete": [c["prompt_id"], blocker]})  # the running one stays
            queue = await (await client.get("/queue")).json()
            assert len(queue["queue_pending"]) == 3 and len(queue["queue_running"]) == 1
            await client.post("/interrupt")
            await until_done(ws, blocker)
            for _ in range(600):
                if (await (await client.get("/prompt")).json())["exec_info"]["queue_remaining"] == 0:
                    break
                await asyncio.sleep(0.05)
            history = await (await client.get("/history")).json()
            assert list(history) == [blocker, b["prompt_id"], a["prompt_id"], d["prompt_id"]]

    run(go())


def test_twenty_clients_each_get_only_their_own_messages(tmp_path, shared):
    async def client_run(client, n: int):
        sid = f"client{n}"
        ws, first = await connect(client, sid, flags={})
        assert first["data"]["sid"] == sid
        r = await client.post("/prompt", json={"prompt": cheap(f"c{n}", colour=n), "client_id": sid})
        pid = (await r.json())["prompt_id"]
        texts, _ = await until_done(ws, pid)
        await ws.close()
        return pid, texts

    async def go():
        async with served(tmp_path, shared) as client:
            results = await asyncio.gather(*(client_run(client, n) for n in range(20)))
            for n, (pid, texts) in enumerate(results):
                ids = {m["data"].get("prompt_id") for m in texts if m["type"] != "status"}
                assert ids == {pid}, (n, ids)
                (out,) = [m["data"]["output"] for m in texts if m["type"] == "executed"]
                assert out["images"][0]["filename"] == f"c{n}_00001_.png"

    run(go())


def png(size=(16, 12), colour=(200, 30, 40, 255)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_naming_refusals_and_use_by_loadimage(tmp_path, shared):
    async def upload(client, name, data, path="/upload/image", **fields):
        """A multipart body written out by hand, as a browser sends it (aiohttp's own client
        would percent-encode a name like '../x.png' and so never test the refusal)."""
        parts = [f'--B\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                 for k, v in fields.items()]
        parts.append(f'--B\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + b"--B--\r\n"
        return await client.post(path, data=body, headers={"Content-Type": "multipart/form-data; boundary=B"})

    async def go():
        async with served(tmp_path, shared, max_upload_mb=0.05) as client:
            r = await upload(client, "pic.png", png())
            assert r.status == 200 and await r.json() == {"name": "pic.png", "subfolder": "", "type": "input"}
            assert (tmp_path / "input" / "pic.png").read_bytes() == png()
            r = await upload(client, "pic.png", png())  # the same bytes: the same file
            assert (await r.json())["name"] == "pic.png"
            r = await upload(client, "pic.png", png(colour=(0, 0, 255, 255)))
            assert (await r.json())["name"] == "pic (1).png"
            r = await upload(client, "pic.png", png(colour=(0, 255, 0, 255)), overwrite="true")
            assert (await r.json())["name"] == "pic.png"
            assert (tmp_path / "input" / "pic.png").read_bytes() == png(colour=(0, 255, 0, 255))
            r = await upload(client, "s.png", png(), subfolder="sub/dir")
            assert await r.json() == {"name": "s.png", "subfolder": "sub/dir", "type": "input"}
            assert (tmp_path / "input" / "sub" / "dir" / "s.png").is_file()
            # refused: escaping names and folders, bad types, no file, too large, not multipart
            assert (await upload(client, "../evil.png", png())).status == 400
            r = await upload(client, "/tmp/evil.png", png())  # aiohttp's parser already drops the leading /
            assert r.status == 200 and (await r.json())["name"] == "evil.png"
            assert (tmp_path / "input" / "evil.png").is_file() and not Path("/tmp/evil.png").exists()
            assert (await upload(client, "C:\\evil.png", png())).status == 400
            assert (await upload(client, "ok.png", png(), subfolder="../..")).status == 403
            assert (await upload(client, "ok.png", png(), type="models")).status == 400
            assert (await upload(client, "big.png", np.random.default_rng(0).bytes(80_000))).status == 413
            r = await client.post("/upload/image", json={"image": "x"})
            assert r.status == 400
            r = await client.post("/upload/image", data=b"--B\r\nContent-Disposition: form-data; name=\"image\"",
                                  headers={"Content-Type": "multipart/form-data; boundary=B"})
            assert r.status == 400 and "malformed multipart" in await r.text()
            assert not (tmp_path / "evil.png").exists()
            # a mask upload puts the mask's alpha on the original
            mask = png(size=(16, 12), colour=(0, 0, 0, 0))
            r = await upload(client, "masked.png", mask, path="/upload/mask",
                             original_ref=json.dumps({"filename": "pic.png", "type": "input"}))
            assert r.status == 200
            out = np.asarray(Image.open(tmp_path / "input" / "masked.png"))
            assert out.shape == (12, 16, 4) and (out[..., 3] == 0).all() and (out[0, 0, :3] == (0, 255, 0)).all()
            # the uploaded picture is used by LoadImage in a prompt
            ws, _ = await connect(client, "erin")
            prompt = {"load": {"class_type": "LoadImage", "inputs": {"image": "pic (1).png"}},
                      "save": {"class_type": "SaveImage", "inputs": {"images": ["load", 0], "filename_prefix": "up"}}}
            pid = (await (await client.post("/prompt", json={"prompt": prompt, "client_id": "erin"})).json())["prompt_id"]
            texts, _ = await until_done(ws, pid)
            (out,) = [m["data"]["output"]["images"][0] for m in texts if m["type"] == "executed"]
            saved = np.asarray(Image.open(tmp_path / "output" / out["filename"]))
            assert saved.shape == (12, 16, 3) and (saved == (0, 0, 255)).all()

    run(go())


def test_view_refuses_escapes_and_converts_channels(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            (tmp_path / "output" / "sub").mkdir(parents=True)
            Image.new("RGBA", (4, 4), (10, 20, 30, 128)).save(tmp_path / "output" / "sub" / "a.png")
            (tmp_path / "secret.txt").write_text("no")
            ok = {"filename": "a.png", "subfolder": "sub", "type": "output"}
            assert (await client.get("/view", params=ok)).status == 200
            assert (await client.get("/view", params={**ok, "filename": "../secret.txt", "subfolder": ""})).status == 400
            assert (await client.get("/view", params={**ok, "filename": "/etc/passwd"})).status == 400
            assert (await client.get("/view", params={**ok, "subfolder": "../.."})).status == 403
            assert (await client.get("/view", params={**ok, "type": "models"})).status == 400
            assert (await client.get("/view", params={**ok, "filename": "nope.png"})).status == 404
            assert (await client.get("/view", params={"type": "output"})).status == 404
            assert (await client.get("/view", params={**ok, "filename": ""})).status == 400
            rgb = Image.open(io.BytesIO(await (await client.get("/view", params={**ok, "channel": "rgb"})).read()))
            assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (10, 20, 30)
            alpha = Image.open(io.BytesIO(await (await client.get("/view", params={**ok, "channel": "a"})).read()))
            assert alpha.getpixel((0, 0)) == (0, 0, 0, 128)
            r = await client.get("/view", params={**ok, "preview": "jpeg;50", "channel": "rgb"})
            assert r.content_type == "image/jpeg" and (await r.read())[:2] == b"\xff\xd8"
            assert (await client.get("/view", params={"filename": "a.png [output]", "subfolder": "sub"})).status == 200

    run(go())


def test_origin_check_and_info_routes(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            host = f"127.0.0.1:{client.port}"
            r = await client.get("/prompt", headers={"Host": host, "Origin": "http://evil.example"})
            assert r.status == 403
            r = await client.get("/prompt", headers={"Host": host, "Origin": f"http://127.0.0.1:{client.port}"})
            assert r.status == 200
            r = await client.post("/prompt", json={"prompt": cheap("x")},
                                  headers={"Host": host, "Origin": "http://127.0.0.1:9999"})
            assert r.status == 403
            info = await (await client.get("/object_info")).json()
            ks = info["KSampler"]
            assert ks["input"]["required"]["steps"][0] == "INT" and ks["output"] == ["LATENT"]
            assert "latentgraph-shapes.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
            one = await (await client.get("/api/object_info/KSampler")).json()
            assert one == {"KSampler": ks}
            assert await (await client.get("/object_info/Nope")).json() == {}
            stats = await (await client.get("/system_stats")).json()
            assert stats["system"]["ram_total"] > 0 and isinstance(stats["system"]["argv"], list)
            assert stats["devices"][0]["type"] in ("cpu", "cuda")
            folders = await (await client.get("/models")).json()
            assert {"checkpoints", "controlnet", "t2i_adapter", "gligen"} <= set(folders)
            assert await (await client.get("/models/gligen")).json() == []
            assert "latentgraph-shapes.safetensors" in await (await client.get("/models/checkpoints")).json()
            assert (await client.get("/models/nope")).status == 404
            assert await (await client.get("/extensions")).json() == []
            assert (await (await client.get("/features")).json())["max_upload_size"] == 100 * 1024 * 1024
            assert (await client.post("/free", json={"unload_models": True})).status == 200

    run(go())


def test_history_survives_a_restart(tmp_path, shared):
    async def first():
        async with served(tmp_path, shared) as client:
            ws, _ = await connect(client, "frank")
            pid = (await (await client.post("/prompt", json={"prompt": cheap("keep"), "client_id": "frank"})).json())["prompt_id"]
            await until_done(ws, pid)
            return pid, await (await client.get("/history")).json()

    async def second():
        async with served(tmp_path, shared) as client:
            return await (await client.get("/history")).json()

    pid, before = run(first())
    after = run(second())
    assert list(after) == [pid] and after == before
    assert (tmp_path / "user" / "history" / f"{pid}.json").is_file()


def test_jobs_api_lists_filters_shows_and_cancels(tmp_path, shared):
    async def go():
        async with served(tmp_path, shared) as client:
            ws, _ = await connect(client, "gina")
            ok = (await (await client.post("/prompt", json={"prompt": cheap("j"), "client_id": "gina",
                                                            "extra_data": {"extra_pnginfo": {"workflow": {"id": "wf-1"}}}})).json())["prompt_id"]
            await until_done(ws, ok)
            bad = (await (await client.post("/prompt", json={"prompt": FAILING, "client_id": "gina"})).json())["prompt_id"]
            await until_done(ws, bad)
            long = await start_long(client, ws, "gina", seed=4)
            waiting = (await (await client.post("/prompt", json={"prompt": cheap("w")})).json())["prompt_id"]
            body = await (await client.get("/api/jobs", params={"status": "in_progress,pending", "limit": "200",
                                                                "offset": "0"})).json()
            assert [(j["id"], j["status"]) for j in body["jobs"]] == [(waiting, "pending"), (long, "in_progress")]
            assert body["pagination"] == {"offset": 0, "limit": 200, "total": 2, "has_more": False}
            assert all(isinstance(j["create_time"], int) for j in body["jobs"])
            # cancel the pending one, then the running one
            assert await (await client.post(f"/api/jobs/{waiting}/cancel")).json() == {"cancelled": True}
            assert await (await client.post(f"/api/jobs/{waiting}/cancel")).json() == {"cancelled": False}
            r = await client.post("/api/jobs/cancel", json={"job_ids": [long]})
            assert await r.json() == {"cancelled": True}
            await until_done(ws, long)
            body = await (await client.get("/api/jobs", params={"status": "completed,failed,cancelled",
                                                                "sort_order": "asc"})).json()
            assert [(j["id"], j["status"]) for j in body["jobs"]] == [(ok, "completed"), (bad, "failed"),
                                                                      (long, "cancelled")]
            done = body["jobs"][0]
            assert done["outputs_count"] == 1 and done["workflow_id"] == "wf-1"
            assert done["preview_output"] == {"filename": "j_00001_.png", "subfolder": "", "type": "output",
                                              "nodeId": "save", "mediaType": "images"}
            assert done["execution_end_time"] >= done["execution_start_time"] >= done["create_time"] - 1000
            assert body["jobs"][1]["execution_error"]["node_id"] == "boom"
            page = await (await client.get("/api/jobs", params={"limit": "1", "offset": "1", "sort_order": "asc"})).json()
            assert [j["id"] for j in page["jobs"]] == [bad] and page["pagination"]["has_more"] is True
            assert [j["id"] for j in (await (await client.get("/api/jobs", params={"workflow_id": "wf-1"})).json())["jobs"]] == [ok]
            full = await (await client.get(f"/api/jobs/{ok}")).json()
            assert full["outputs"]["save"]["images"][0]["filename"] == "j_00001_.png"
            assert full["workflow"]["extra_data"]["extra_pnginfo"]["workflow"]["id"] == "wf-1"
            assert full["execution_status"]["status_str"] == "success" and "save" in full["workflow"]["prompt"]
            # refusals
            assert (await client.get("/api/jobs/" + str(uuid.uuid4()))).status == 404
            assert (await client.get("/api/jobs", params={"status": "weird"})).status == 400
            assert (await client.get("/api/jobs", params={"limit": "0"})).status == 400
            assert (await client.get("/api/jobs", params={"limit": "x"})).status == 400
            assert (await client.get("/api/jobs", params={"sort_by": "name"})).status == 400
            assert (await client.post("/api/jobs/cancel", json={"job_ids": "x"})).status == 400
            assert (await client.post("/api/jobs/cancel", json={"job_ids": ["not-a-uuid"]})).status == 400
            r = await client.post("/api/jobs/cancel", json={"job_ids": [str(uuid.uuid4())]})
            assert r.status == 404 and "unknown_ids" in await r.json()

    run(go())


def test_frontend_boot_routes_and_static_files(tmp_path, shared):
    web_root = tmp_path / "web"
    (web_root / "extensions" / "core").mkdir(parents=True)
    (web_root / "assets").mkdir()
    (web_root / "index.html").write_text("<html>front</html>")
    (web_root / "assets" / "app.js").write_text("console.log(1)")
    (web_root / "extensions" / "core" / "a.js").write_text("")
    (web_root / "extensions" / "mine.js").write_text("")

    async def go():
        async with served(tmp_path, shared, frontend=web_root) as client:
            r = await client.get("/")
            assert await r.text() == "<html>front</html>" and r.headers["Cache-Control"] == "no-cache"
            r = await client.get("/assets/app.js")
            assert await r.text() == "console.log(1)" and r.headers["Cache-Control"] == "no-cache"
            assert await (await client.get("/api/extensions")).json() == ["/extensions/core/a.js", "/extensions/mine.js"]
            assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": False}
            assert await (await client.get("/api/settings")).json() == {}
            assert (await client.post("/api/settings", data=json.dumps({"Comfy.A": 1, "Comfy.B": "x"}))).status == 200
            assert (await client.post("/api/settings/Comfy.A", data=json.dumps(2))).status == 200
            assert await (await client.get("/api/settings")).json() == {"Comfy.A": 2, "Comfy.B": "x"}
            assert await (await client.get("/api/settings/Comfy.B")).json() == "x"
            assert (await client.post("/api/settings", data=b"[1]")).status == 400
            for route in ("/api/i18n", "/api/global_subgraphs", "/api/workflow_templates"):
                assert await (await client.get(route)).json() == {}
            # user data: the frontend encodes the whole relative path into one segment
            assert (await client.get("/api/userdata", params={"dir": "workflows"})).status == 404
            r = await client.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=false&full_info=true", data=b'{"a": 1}')
            info = await r.json()
            assert r.status == 200 and info["path"] == "workflows/my flow.json" and info["size"] == 8
            assert (await client.post("/api/userdata/workflows%2Fmy%20flow.json?overwrite=false", data=b"x")).status == 409
            assert await (await client.get("/api/userdata/workflows%2Fmy%20flow.json")).read() == b'{"a": 1}'
            listing = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                                      "full_info": "true"})).json()
            assert [f["path"] for f in listing] == ["my flow.json"]
            r = await client.post("/api/userdata/workflows%2Fmy%20flow.json/move/workflows%2Frenamed.json")
            assert r.status == 200 and await r.json() == "workflows/renamed.json"
            assert await (await client.get("/api/userdata", params={"dir": "workflows"})).json() == ["renamed.json"]
            assert (await client.get("/api/userdata/..%2F..%2Fsecret")).status == 400
            assert (await client.post("/api/userdata/..%2Fsettings.json", data=b"x")).status == 400
            assert (await client.delete("/api/userdata/workflows%2Frenamed.json")).status == 204
            assert (await client.get("/api/userdata/workflows%2Frenamed.json")).status == 404
        async with served(tmp_path, shared, frontend=web_root) as client:  # settings persist
            assert await (await client.get("/api/settings")).json() == {"Comfy.A": 2, "Comfy.B": "x"}
            assert await (await client.get("/api/users")).json() == {"storage": "server", "migrated": True}

    run(go())
