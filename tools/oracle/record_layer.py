#!/usr/bin/env python3
"""Record what a running ComfyUI answers to the layer probe (tests/fixtures/packs/layer_probe).

Nothing here imports ComfyUI: it speaks ComfyUI's HTTP and websocket protocol only (aiohttp).
The same recording procedure (:func:`record`) runs against latentgraph's server in
tests/test_comfy_layer_oracle.py, and the two recordings are compared by value.

    python tools/oracle/record_layer.py --make-base /work/oracle/base
    python tools/oracle/record_layer.py --url http://127.0.0.1:8191 --out tests/fixtures/comfy_layer/recorded.json \\
        [--comfyui /work/oracle/ComfyUI]

``--make-base DIR`` lays out the base folder the probe reads (empty model, input and output
files with fixed names) and copies the probe pack into DIR/custom_nodes/. The server is started
with ``--base-directory DIR`` (see tools/oracle/README.md). ``--url`` queues the probe prompt,
waits for it over the websocket, reads /history, and fetches the probe's routes; ``--out``
gets the JSON with ComfyUI's version and, with ``--comfyui``, its git commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "fixtures" / "packs" / "layer_probe"
CLIENT_ID = "layer-probe-client"
TEXT_EVENT = 3  # ComfyUI's BinaryEventTypes.TEXT (a progress text frame)

# Files of the base folder, all empty: nested folders, names with spaces, upper-case and hidden
# names, legacy folders (clip, unet), a second folder of a name (t2i_adapter for controlnet),
# files of other extensions, and numbered outputs for get_save_image_path's counter.
LAYOUT = (
    "models/checkpoints/base.safetensors", "models/checkpoints/sd15/v1 pruned.ckpt",
    "models/checkpoints/.git/hidden.safetensors", "models/checkpoints/readme.txt",
    "models/loras/b.safetensors", "models/loras/sub/a.ckpt", "models/loras/notes.txt",
    "models/loras/My Lora.safetensors", "models/loras/UPPER.SAFETENSORS", "models/loras/.hidden.pt",
    "models/loras/.cache/c.safetensors",
    "models/clip/old_te.safetensors", "models/text_encoders/t5.safetensors",
    "models/unet/u.safetensors", "models/diffusion_models/d.sft",
    "models/controlnet/cn.safetensors", "models/t2i_adapter/adapter.pth",
    "models/configs/v1.yaml", "models/configs/readme.md",
    "models/embeddings/emb.pt", "models/embeddings/emb2.bin",
    "models/classifiers/cls", "models/classifiers/cls.bin", "models/diffusers/sd/model_index.json",
    "models/probe_extra_a/x.bin", "models/probe_extra_b/y.txt",
    "input/x.png", "input/sub/y.png", "input/a/b/deep.png",
    "output/o.png", "output/probe_counter/img_00003_.png", "output/probe_counter/img_00007_.png",
    "output/probe_counter/img_x_.png", "output/probe_counter/other_00009_.png",
    "output/probe_counter/IMG_00011_.png", "output/probe_counter/img_00012.png",
    "output/probe_counter/img_00020_extra.png",
)

# One prompt with every probe node (ids are the keys the recording uses)
PROMPT = {
    "folders": {"class_type": "LayerProbeFolderPaths", "inputs": {}},
    "utils": {"class_type": "LayerProbeUtils", "inputs": {}},
    "progress": {"class_type": "LayerProbeProgress", "inputs": {}},
    "helpers": {"class_type": "LayerProbeHelpers", "inputs": {}},
    "mm": {"class_type": "LayerProbeModelManagement", "inputs": {}},
    "constants": {"class_type": "LayerProbeConstants", "inputs": {}},
    "sampling": {"class_type": "LayerProbeSampling", "inputs": {}},
    "core": {"class_type": "LayerProbeCoreNodes", "inputs": {}},
    "server": {"class_type": "LayerProbeServer", "inputs": {}},
    "onprompt": {"class_type": "LayerProbeOnPrompt", "inputs": {"seen": "as queued"}},
    "graph": {"class_type": "LayerProbeGraph", "inputs": {}},
    "expand": {"class_type": "LayerProbeExpand", "inputs": {"value": 10, "times": 3}},
    "show": {"class_type": "LayerProbeShow", "inputs": {"value": ["expand", 0]}},
}
ROUTES = ("/probe/echo", "/api/probe/echo")


def make_base(base: Path) -> None:
    """The probe's base folder: LAYOUT's empty files and the probe pack in custom_nodes/."""
    for name in LAYOUT:
        path = base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    target = base / "custom_nodes" / "layer_probe"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(PROBE, target, ignore=shutil.ignore_patterns("__pycache__"))


class Remote:
    """aiohttp's session with a base URL: the interface of aiohttp's TestClient (get, post,
    ws_connect with paths), so :func:`record` runs against either."""

    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session, self.url = session, url.rstrip("/")

    def get(self, path: str, **kwargs):
        return self.session.get(self.url + path, **kwargs)

    def post(self, path: str, **kwargs):
        return self.session.post(self.url + path, **kwargs)

    def ws_connect(self, path: str, **kwargs):
        return self.session.ws_connect(self.url + path, **kwargs)


async def _wait(ws, prompt_id: str, timeout: float) -> tuple[list[dict], list[bytes]]:
    """The JSON messages and binary frames until the prompt ended (executing with no node)."""
    texts, frames = [], []
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type == aiohttp.WSMsgType.BINARY:
            frames.append(msg.data)
            continue
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"the websocket closed before the prompt ended ({msg.type})")
        data = json.loads(msg.data)
        texts.append(data)
        body = data.get("data") or {}
        if body.get("prompt_id") == prompt_id and (
                data["type"] == "execution_error" or (data["type"] == "executing" and body.get("node") is None)):
            return texts, frames


def _text_frame(frame: bytes) -> dict:
    """A progress text frame: event type, then the node id's length, the node id, the text."""
    size = int.from_bytes(frame[4:8], "big")
    return {"event": int.from_bytes(frame[:4], "big"), "node": frame[8:8 + size].decode("utf-8"),
            "text": frame[8 + size:].decode("utf-8"), "hex": frame.hex()}


async def _routes(client) -> dict:
    found = {}
    for path in ROUTES:
        async with client.get(path + "?q=probe%20q") as r:
            found[f"GET {path}"] = {"status": r.status, "json": await r.json()}
        async with client.post(path, json={"a": [1, 2.5], "b": None}) as r:
            found[f"POST {path}"] = {"status": r.status, "json": await r.json()}
    return found


async def record(client, timeout: float = 120.0) -> dict:
    """Queue the probe prompt, collect its outputs and messages, call the probe's routes."""
    ws = await client.ws_connect(f"/ws?clientId={CLIENT_ID}")
    try:
        async with client.post("/prompt", json={"prompt": PROMPT, "client_id": CLIENT_ID}) as r:
            if r.status != 200:
                raise RuntimeError(f"the prompt was refused (HTTP {r.status}): {await r.text()}")
            prompt_id = (await r.json())["prompt_id"]
        texts, frames = await _wait(ws, prompt_id, timeout)
    finally:
        await ws.close()
    async with client.get(f"/history/{prompt_id}") as r:
        entry = (await r.json())[prompt_id]
    errors = [t["data"] for t in texts if t["type"] == "execution_error"]
    return {
        "status": entry.get("status", {}).get("status_str"),
        "errors": [{"node": e.get("node_id"), "type": e.get("exception_type"), "message": e.get("exception_message")}
                   for e in errors],
        "outputs": {node: json.loads(ui["text"][0]) for node, ui in sorted(entry.get("outputs", {}).items())},
        "progress": [{"value": t["data"]["value"], "max": t["data"]["max"], "node": t["data"]["node"],
                      "prompt_id_matches": t["data"].get("prompt_id") == prompt_id}
                     for t in texts if t["type"] == "progress"],
        "events": [t["data"] for t in texts if t["type"] == "probe.event"],
        "progress_text": [_text_frame(f) for f in frames if int.from_bytes(f[:4], "big") == TEXT_EVENT],
        "routes": await _routes(client),
    }


def _commit(comfyui: Path | None) -> str | None:
    if comfyui is None:
        return None
    return subprocess.run(["git", "-C", str(comfyui), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


async def _main(url: str, out: Path, comfyui: Path | None) -> None:
    async with aiohttp.ClientSession() as session:
        client = Remote(session, url)
        async with client.get("/system_stats") as r:
            system = (await r.json())["system"]
        found = await record(client)
    found = {"comfyui": {"version": system.get("comfyui_version"), "commit": _commit(comfyui),
                         "pytorch": system.get("pytorch_version"), "python": system.get("python_version")},
             "prompt": PROMPT, **found}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{out}: status {found['status']}, {len(found['outputs'])} outputs, {len(found['progress'])} progress "
          f"messages, {len(found['events'])} events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-base", type=Path, help="lay out this base folder and copy the probe into it")
    parser.add_argument("--url", help="the running ComfyUI, e.g. http://127.0.0.1:8191")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "comfy_layer" / "recorded.json")
    parser.add_argument("--comfyui", type=Path, help="ComfyUI's git checkout (for the commit recorded)")
    args = parser.parse_args(argv)
    if args.make_base is None and args.url is None:
        parser.error("give --make-base, --url, or both")
    if args.make_base is not None:
        make_base(args.make_base)
    if args.url is not None:
        asyncio.run(_main(args.url, args.out, args.comfyui))
    return 0


if __name__ == "__main__":
    sys.exit(main())
