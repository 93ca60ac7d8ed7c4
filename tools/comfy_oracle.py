#!/usr/bin/env python3
"""Drive a running ComfyUI server over HTTP to make reference outputs ("the oracle").

Nothing here imports ComfyUI: it speaks ComfyUI's HTTP protocol only, with the standard library.

    python tools/comfy_oracle.py --server 127.0.0.1:8190 run PROMPT.json --out DIR [--input IMG ...] [--fresh]
    python tools/comfy_oracle.py install-model FILE [--kind checkpoints] [--base /work/oracle/base]
    python tools/comfy_oracle.py --server 127.0.0.1:8190 info

`run` uploads each --input file (POST /upload/image; the prompt names it by its base name), queues
the API prompt (POST /prompt with a client_id), polls GET /history/{prompt_id} until the prompt
finished, then downloads every file the output nodes list (GET /view: PNGs from SaveImage, `.latent`
files from SaveLatent) into DIR, and writes DIR/outputs.json: the prompt id, the prompt, and per node
the local paths of its files. PROMPT.json is an API prompt ({node_id: {class_type, inputs}}) or
{"prompt": {...}}. A `.latent` file is a safetensors file whose `latent_tensor` is LATENT["samples"]
exactly as the node got it (not scaled), plus an empty `latent_format_version_0` tensor.

`install-model` copies a model file into the oracle's `models/<kind>/` folder (checkpoints, loras,
controlnet, clip_vision, style_models, gligen, upscale_models, ...); ComfyUI sees new files
without a restart.

Exit status: 0 on success, 1 when ComfyUI rejected or failed the prompt (its error is printed),
2 on bad usage or an unreachable server.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

DEFAULT_BASE = os.environ.get("COMFY_ORACLE_BASE", "/work/oracle/base")


class OracleError(Exception):
    """ComfyUI refused or failed the prompt; the message is ComfyUI's own error, condensed."""


def _request(server: str, path: str, data: bytes | None = None, headers: dict | None = None,
             timeout: float = 60.0) -> bytes:
    req = urllib.request.Request(f"http://{server}{path}", data=data, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.read()


def _json(server: str, path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {} if payload is None else {"Content-Type": "application/json"}
    return json.loads(_request(server, path, data, headers))


def upload(server: str, file: Path) -> str:
    """POST one file to /upload/image (overwriting a same-named one); returns the name ComfyUI stored."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'.encode(),
             (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file.name}"\r\n'
              'Content-Type: application/octet-stream\r\n\r\n').encode() + file.read_bytes() + b"\r\n",
             f"--{boundary}--\r\n".encode()]
    body = b"".join(parts)
    reply = json.loads(_request(server, "/upload/image", body,
                                {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
    return reply["name"]


def queue(server: str, prompt: dict, client_id: str) -> str:
    """POST /prompt; a validation failure comes back as HTTP 400 with ComfyUI's node_errors."""
    try:
        reply = _json(server, "/prompt", {"prompt": prompt, "client_id": client_id})
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        raise OracleError(f"ComfyUI rejected the prompt (HTTP {exc.code}): {body}") from None
    return reply["prompt_id"]


def wait(server: str, prompt_id: str, timeout: float, poll: float = 0.5) -> dict:
    """Poll /history/{id} until the prompt is finished; return its history entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = _json(server, f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"]
            if status.get("status_str") != "success":
                raise OracleError(_execution_error(status))
            return entry
        time.sleep(poll)
    raise OracleError(f"prompt {prompt_id} did not finish within {timeout:g} s")


def _execution_error(status: dict) -> str:
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            tail = "".join(data.get("traceback", [])[-3:])
            return (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tail}")
        if kind == "execution_interrupted":
            return "the prompt was interrupted"
    return f"the prompt ended with status {status.get('status_str')!r}"


def download(server: str, item: dict, out: Path) -> Path:
    """GET /view for one output file ({filename, subfolder, type}); the bytes are stored unchanged."""
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    target = out / item["filename"]
    target.write_bytes(_request(server, f"/view?{query}"))
    return target


def free(server: str) -> None:
    """POST /free: ComfyUI unloads its models and drops its node cache before the next prompt,
    so every node of the next prompt runs (a cached output would hide a changed model file)."""
    _request(server, "/free", json.dumps({"unload_models": True, "free_memory": True}).encode(),
             {"Content-Type": "application/json"})
    # /free only sets a flag; ComfyUI's idle worker wakes and applies it within moments. A prompt
    # queued before that would still run on the old cache, so give the worker time to act.
    time.sleep(2.0)


def run(server: str, prompt_file: Path, out: Path, inputs: list[Path], timeout: float,
        fresh: bool = False) -> dict:
    prompt = json.loads(prompt_file.read_text())
    prompt = prompt.get("prompt", prompt) if isinstance(prompt, dict) else prompt
    if not isinstance(prompt, dict) or not all(isinstance(n, dict) and "class_type" in n for n in prompt.values()):
        raise ValueError(f"{prompt_file}: not an API prompt ({{node_id: {{class_type, inputs}}}})")
    for file in inputs:
        stored = upload(server, file)
        if stored != file.name:  # the prompt names inputs by base name; a rename would break it
            raise OracleError(f"ComfyUI stored {file} as {stored!r}, not {file.name!r}")
    if fresh:
        free(server)
    prompt_id = queue(server, prompt, client_id=uuid.uuid4().hex)
    entry = wait(server, prompt_id, timeout)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for node_id, node_out in entry.get("outputs", {}).items():
        for items in node_out.values():  # "images", "latents", "audio", ...: lists of file records
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    files.setdefault(node_id, []).append(str(download(server, item, out)))
    manifest = {"server": server, "prompt_id": prompt_id, "prompt": prompt, "files": files,
                "outputs": entry.get("outputs", {})}
    (out / "outputs.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def install_model(file: Path, kind: str, base: Path) -> Path:
    """Copy FILE into BASE/models/KIND/ (made if missing); returns the destination."""
    if not file.is_file():
        raise ValueError(f"{file}: no such file")
    if not (base / "models").is_dir():
        raise ValueError(f"{base}: not a ComfyUI base directory (no models/ folder)")
    dest = base / "models" / kind / file.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(file, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:8190", help="host:port of the ComfyUI server")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="queue an API prompt and download its outputs")
    p_run.add_argument("prompt", type=Path)
    p_run.add_argument("--out", type=Path, required=True, help="folder for the downloaded outputs")
    p_run.add_argument("--input", type=Path, action="append", default=[], help="file to upload first")
    p_run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the prompt")
    p_run.add_argument("--fresh", action="store_true", help="POST /free first: no output comes from ComfyUI's cache")
    p_inst = sub.add_parser("install-model", help="copy a model file into the oracle's models/ folders")
    p_inst.add_argument("file", type=Path)
    p_inst.add_argument("--kind", default="checkpoints", help="models/ subfolder (default: checkpoints)")
    p_inst.add_argument("--base", type=Path, default=Path(DEFAULT_BASE), help="the oracle's --base-directory")
    sub.add_parser("info", help="print the server's /system_stats")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "run":
            manifest = run(args.server, args.prompt, args.out, args.input, args.timeout, args.fresh)
            for node_id, paths in sorted(manifest["files"].items()):
                print(f"node {node_id}: " + ", ".join(paths))
        elif args.cmd == "install-model":
            print(install_model(args.file, args.kind, args.base))
        else:
            print(json.dumps(_json(args.server, "/system_stats"), indent=1))
    except OracleError as exc:
        print(f"comfy_oracle: {exc}", file=sys.stderr)
        return 1
    except (ValueError, OSError, urllib.error.URLError) as exc:
        print(f"comfy_oracle: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
