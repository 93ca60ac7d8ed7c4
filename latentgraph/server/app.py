"""The aiohttp application: ComfyUI's HTTP routes and websocket over one executor.

A single worker thread takes prompts from the queue and runs them on one Executor (so its
result cache is shared by every prompt); what the executor reports is recorded in the history
and relayed to the websocket of the client that queued the prompt, through one publisher task
on the event loop (messages keep their order).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from ..graph import Environment, Executor, Workflow
from ..graph.cache import release_memory
from ..graph.errors import Interrupted, NodeExecutionError, ValidationError, WorkflowError
from ..graph.validate import validate
from .. import comfy_compat
from . import jobs, logs
from .extensions import ExtensionRoutes
from .files import FileRoutes
from .frontend import FrontendRoutes, find_docs, find_frontend, install_docs
from .journal import JOURNAL_FILE, Journal
from .limits import (MAX_TARGETS, BadInput, optional_bool, optional_id, parse_json, prompt_number,
                     query_int)
from .middleware import cache_headers, origin_check
from .model_library import ModelLibrary
from .queue import MAX_HISTORY, History, PromptQueue, QueueItem
from .sockets import Client, SocketHub, serve_socket
from .templates import PackTemplates, TemplateRoutes

log = logging.getLogger("latentgraph.server")

VERSION = "0.1.0"
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "embeddings", "clip", "text_encoders", "diffusion_models", "unet",
                 "upscale_models", "controlnet", "t2i_adapter", "gligen", "clip_vision", "style_models",
                 "diffusers", "hypernetworks", "vae_approx")
PREVIEW_JPEG, PREVIEW_PNG = 1, 2
BINARY_PREVIEW, BINARY_PREVIEW_WITH_METADATA = 1, 4
SOCKET_QUEUE = 1024  # messages waiting for one websocket before it is dropped as not reading
SEND_TIMEOUT = 30.0  # seconds one message may take to go out before its websocket is dropped
STOPPED = "the server stopped while this prompt was running; it did not finish (queue it again to run it)"


class Server(SocketHub):
    """The state behind the routes: queue, history, executor, sockets, worker."""

    def __init__(self, registry, env: Environment, services: dict, user_dir: Path, max_upload_bytes: int,
                 previews: bool = True, executor=None, preview_method: str = "auto", preview_size: int = 512):
        self.registry = registry
        self.env = env
        self.services = services
        # an Executor, or anything with its run/interrupt/cache (the Ray one runs `parallel` prompts at once)
        self.executor = executor if executor is not None else Executor(registry, env, services=services)
        self.parallel = max(1, int(getattr(self.executor, "parallel", 1)))
        self.user_dir = Path(user_dir)
        self.history = History(self.user_dir / "history")
        self.queue = PromptQueue(Journal(self.user_dir / JOURNAL_FILE))
        # prompts that were running when the server last stopped (kill -9 included) get a failed
        # history entry saying so; the pending ones are queued again as they were
        self.queue.restore(lambda item: self.history.stopped(item, STOPPED))
        self.max_upload_bytes = max_upload_bytes
        self.previews = previews
        # --preview-method (a prompt's extra_data.preview_method overrides it) and --preview-size
        self.preview_method, self.preview_size = preview_method, preview_size
        self.socket_queue, self.send_timeout = SOCKET_QUEUE, SEND_TIMEOUT
        self.sockets: dict[str, Client] = {}
        self.socket_flags: dict[str, dict] = {}
        self.active: dict[str, list] = {}  # running prompt id -> [QueueItem, node running now]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.outbox: asyncio.Queue | None = None
        self._stopping = threading.Event()
        self._free: dict = {}
        self.queue.on_change.append(self._queue_changed)

    # -- features ---------------------------------------------------------------------------
    def features(self) -> dict:
        return {"supports_preview_metadata": True, "max_upload_size": float(self.max_upload_bytes),
                "extension": {"manager": {"supports_v4": False}}, "node_replacements": False, "assets": False}

    def status(self) -> dict:
        return {"status": {"exec_info": {"queue_remaining": self.queue.remaining()}}}

    # -- messages (any thread) --------------------------------------------------------------
    def send(self, kind: str, data: Any, sid: str | None = None) -> None:
        """Queue a JSON message for one client (or everyone when ``sid`` is None)."""
        self._post(("json", {"type": kind, "data": data}, sid))

    def send_binary(self, payload: bytes, sid: str | None) -> None:
        self._post(("bytes", payload, sid))

    def _post(self, message: tuple) -> None:
        loop, outbox = self.loop, self.outbox
        if loop is None or outbox is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(outbox.put_nowait, message)
        except RuntimeError:  # the loop is shutting down
            pass

    def _queue_changed(self) -> None:
        self.send("status", self.status())

    # -- the worker (its own thread) --------------------------------------------------------
    def worker(self) -> None:
        while not self._stopping.is_set():
            self._maybe_free()
            item = self.queue.get(timeout=0.5)
            if item is None:
                continue
            try:
                self.run_item(item)
            except Exception:  # never let one prompt stop the worker
                log.exception("prompt %s failed outside the executor", item.prompt_id)

    def stop(self) -> None:
        self._stopping.set()
        self.queue.close()
        self.executor.interrupt()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Interrupt the running prompt ``prompt_id`` (any running one when None); False if none runs."""
        targets = [pid for pid in list(self.active) if prompt_id is None or pid == prompt_id]
        for pid in targets:
            self.executor.interrupt(pid)
        return bool(targets)

    def running_nodes(self, client: str) -> list[str]:
        """The nodes running now in prompts queued by ``client``."""
        return [node for item, node in list(self.active.values())
                if node is not None and item.extra_data.get("client_id") == client]

    def free(self, unload_models: bool, free_memory: bool) -> None:
        self._free = {"unload_models": unload_models or free_memory, "free_memory": free_memory}

    def _maybe_free(self) -> None:
        request, self._free = self._free, {}
        if request.get("unload_models"):
            models = self.services.get("models")
            if models is not None and hasattr(models, "clear"):
                models.clear()
        if request.get("free_memory"):
            self.executor.cache.clear()
        if request:
            # dropped models are only garbage until the collector and the allocator let go of them
            release_memory()

    def run_item(self, item: QueueItem) -> None:
        client = item.extra_data.get("client_id") or None
        pid = item.prompt_id
        self.active[pid] = [item, None]
        self.history.start(item)
        ended: dict = {}
        started = time.perf_counter()

        def listener(kind: str, data: dict) -> None:
            if kind == "execution_blocked":  # ComfyUI tells the client with an error message, and
                self.send("execution_error", data, client)  # the run goes on (not in the history)
                return
            if kind == "progress_text":  # a binary frame, as ComfyUI's send_progress_text
                self.send_binary(logs.progress_text_frame(data["node"], data["text"]), client)
                return
            preview = data.pop("preview", None) if kind == "progress" else None
            if kind == "executing":
                if data.get("node") is None:
                    ended["executing"] = data  # sent after the history is stored, as ComfyUI
                    return
                self.active[pid][1] = data["node"]
            self.history.message(pid, kind, data)
            if kind in ("progress", "execution_interrupted"):
                self.send(kind, data, client)  # broadcast when nobody queued it, as ComfyUI
            elif client is not None:
                self.send(kind, data, client)
            if preview is not None and self.previews:
                self._send_preview(preview, data, client)

        ok = False
        try:
            wf = Workflow.from_api(item.prompt, source=f"prompt {pid}")
            extra = {**item.extra_data, **item.sensitive, "preview_method": self._preview_method(item.extra_data)}
            self.executor.run(wf, prompt_id=pid, targets=item.outputs or None, extra_data=extra,
                              listener=listener, partial=True)
            ok = True
        except ValidationError as exc:  # the files changed since the prompt was queued
            self._fail_before_start(pid, client, exc)
        except (NodeExecutionError, Interrupted):
            pass  # the executor has already said so
        except Exception as exc:
            log.exception("prompt %s", pid)
            self._fail_before_start(pid, client, exc)
        finally:
            self._end(item, ok, client, ended)
            log.info("Prompt executed in %s", logs.elapsed(time.perf_counter() - started))

    def _end(self, item: QueueItem, ok: bool, client: str | None, ended: dict) -> None:
        """A prompt leaves the queue whatever happens to its history entry (a full disk is
        logged by the history, and the entry stays readable until the server stops)."""
        pid = item.prompt_id
        try:
            self.history.finish(pid, ok)
        finally:
            self.active.pop(pid, None)
            self.queue.done(item)  # -> status broadcast
            if client is not None:
                self.send("executing", ended.get("executing") or {"node": None, "prompt_id": pid}, client)

    def _fail_before_start(self, pid: str, client: str | None, exc: BaseException) -> None:
        stamp = int(time.time() * 1000)
        start = {"prompt_id": pid, "timestamp": stamp}
        error = {"prompt_id": pid, "node_id": None, "node_type": None, "executed": [],
                 "exception_message": str(exc), "exception_type": type(exc).__name__, "traceback": [],
                 "current_inputs": {}, "current_outputs": [], "timestamp": stamp}
        for kind, data in (("execution_start", start), ("execution_error", error)):
            self.history.message(pid, kind, data)
            if client is not None:
                self.send(kind, data, client)

    def _preview_method(self, extra_data: dict) -> str:
        """The prompt's preview method: its extra_data.preview_method (none, auto, latent2rgb,
        taesd; the frontend's "default" sends none), else --preview-method; none without previews."""
        from ..nodes.preview import resolve_method

        return resolve_method(extra_data.get("preview_method"), self.preview_method) if self.previews else "none"

    def _send_preview(self, preview, data: dict, client: str | None) -> None:
        from ..nodes.preview import fit_preview

        if client is not None and client not in self.sockets:
            return
        try:
            image = preview() if callable(preview) else preview
            image = fit_preview(image, self.preview_size)
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="JPEG", quality=95)
        except Exception:
            log.exception("preview failed")
            return
        flags = self.socket_flags.get(client, {}) if client else {}
        if flags.get("supports_preview_metadata"):
            node = data.get("node")
            meta = json.dumps({"node_id": node, "prompt_id": data.get("prompt_id"), "display_node_id": node,
                               "parent_node_id": None, "real_node_id": node, "image_type": "image/jpeg"}).encode()
            payload = struct.pack(">II", BINARY_PREVIEW_WITH_METADATA, len(meta)) + meta + buf.getvalue()
        else:
            payload = struct.pack(">II", BINARY_PREVIEW, PREVIEW_JPEG) + buf.getvalue()
        self.send_binary(payload, client)


SERVER = web.AppKey("latentgraph_server", Server)
FRONTEND = web.AppKey("latentgraph_frontend", FrontendRoutes)


# -- routes ---------------------------------------------------------------------------------
def _server(request: web.Request) -> Server:
    return request.app[SERVER]


async def _json_body(request: web.Request, optional: bool = False) -> dict:
    """The request's JSON object, or a 400 saying what is wrong with it (an optional body that
    is missing or not an object counts as ``{}``, as ComfyUI)."""
    raw = await request.read()
    if not raw.strip():
        if optional:
            return {}
        raise _bad_request("empty_body", "The request has no JSON body")
    try:
        body = parse_json(raw)
    except BadInput as exc:
        raise _bad_request("invalid_json", f"The request body is not acceptable JSON: {exc}") from None
    if not isinstance(body, dict):
        if optional:
            return {}
        raise _bad_request("invalid_json", "The request body must be a JSON object")
    return body


def _bad_request(kind: str, message: str, details: str = "") -> web.HTTPBadRequest:
    body = {"error": {"type": kind, "message": message, "details": details or message, "extra_info": {}},
            "node_errors": {}}
    return web.HTTPBadRequest(text=json.dumps(body), content_type="application/json")


def _prompt_fields(body: dict) -> dict:
    """Every field of a POST /prompt body checked by type and range before anything is queued."""
    prompt = body.get("prompt")
    if prompt is None:
        raise _bad_request("no_prompt", "No prompt provided")
    if not isinstance(prompt, dict):
        raise _bad_request("invalid_prompt", "The prompt must be an object of node id -> node")
    try:
        number = prompt_number(body.get("number"))
        front = optional_bool(body.get("front"), "front")
        pid = optional_id(body.get("prompt_id"), "prompt_id", file_safe=True)
        extra = body.get("extra_data")
        if extra is not None and not isinstance(extra, dict):
            raise BadInput("extra_data must be an object")
        extra = dict(extra or {})
        client = optional_id(body.get("client_id"), "client_id")
        client = client if client is not None else optional_id(extra.get("client_id"), "extra_data.client_id")
        if extra.get("extra_pnginfo") is not None and not isinstance(extra["extra_pnginfo"], dict):
            raise BadInput("extra_data.extra_pnginfo must be an object")
        targets = body.get("partial_execution_targets")
        if targets is not None and not (isinstance(targets, list) and len(targets) <= MAX_TARGETS
                                        and all(isinstance(t, str) for t in targets)):
            raise BadInput(f"partial_execution_targets must be a list of at most {MAX_TARGETS} node ids")
    except BadInput as exc:
        raise _bad_request("invalid_prompt", str(exc)) from None
    extra.pop("client_id", None)
    if client is not None:
        extra["client_id"] = client
    return {"prompt": prompt, "number": number, "front": front, "prompt_id": pid, "extra": extra,
            "targets": targets}


async def post_prompt(request: web.Request) -> web.Response:
    srv = _server(request)
    log.info("got prompt")
    fields = _prompt_fields(comfy_compat.on_prompt(await _json_body(request)))
    try:
        wf = Workflow.from_api(fields["prompt"], source="prompt")
    except WorkflowError as exc:
        raise _bad_request("invalid_prompt", "Cannot read the prompt", str(exc)) from None
    try:
        plan = await asyncio.to_thread(validate, wf, srv.registry, srv.env, fields["targets"], True)
    except ValidationError as exc:
        return web.json_response(exc.report.as_comfy(), status=400, dumps=_dumps)
    extra = fields["extra"]
    extra["create_time"] = int(time.time() * 1000)
    pid = fields["prompt_id"] or str(uuid.uuid4())
    number = srv.queue.next_number(fields["front"], fields["number"])
    try:
        srv.queue.put(number, pid, fields["prompt"], extra, list(plan.targets))
    except ValueError as exc:
        raise _bad_request("duplicate_prompt_id", str(exc)) from None
    except OSError as exc:  # the journal cannot record it: refuse rather than lose it on a crash
        log.error("%s", exc)
        body = {"error": {"type": "queue_unavailable", "message": str(exc), "details": str(exc), "extra_info": {}},
                "node_errors": {}}
        return web.json_response(body, status=503)
    return web.json_response({"prompt_id": pid, "number": number, "node_errors": plan.node_errors}, dumps=_dumps)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)


async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response({"exec_info": {"queue_remaining": _server(request).queue.remaining()}})


async def get_queue(request: web.Request) -> web.Response:
    return web.json_response(_server(request).queue.snapshot(), dumps=_dumps)


async def _clear_or_delete(request: web.Request, store) -> web.Response:
    """POST /queue and POST /history: ``{"clear": true}`` and/or ``{"delete": [ids]}``."""
    body = await _json_body(request)
    if body.get("clear"):
        store.clear()
    if "delete" in body:
        ids = body["delete"]
        if not isinstance(ids, list):
            raise _bad_request("invalid_request", "delete must be a list of prompt ids")
        if len(ids) > MAX_HISTORY or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
            raise _bad_request("invalid_request", f"delete must be a list of at most {MAX_HISTORY} prompt ids")
        store.delete([str(i) for i in ids])
    return web.Response(status=200)


async def post_queue(request: web.Request) -> web.Response:
    return await _clear_or_delete(request, _server(request).queue)


async def post_interrupt(request: web.Request) -> web.Response:
    srv = _server(request)
    body = await _json_body(request, optional=True)
    try:
        pid = optional_id(body.get("prompt_id"), "prompt_id")
    except BadInput as exc:
        raise _bad_request("invalid_request", str(exc)) from None
    srv.interrupt(pid)
    return web.Response(status=200)


def _int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    try:
        return query_int(request.query, name, default, lo, hi)
    except BadInput as exc:
        raise _bad_request("invalid_request", str(exc)) from None


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def get_history(request: web.Request) -> web.Response:
    srv = _server(request)
    items = srv.history.items(_int_param(request, "max_items", None, 0, MAX_HISTORY),
                              _int_param(request, "offset", -1, -1, MAX_HISTORY),
                              include_running=_flag(request, "include_running"))
    return web.json_response(items, dumps=_dumps)


async def get_history_item(request: web.Request) -> web.Response:
    srv = _server(request)
    pid = request.match_info["prompt_id"]
    entry = srv.history.get(pid, include_running=_flag(request, "include_running"))
    return web.json_response({pid: entry} if entry is not None else {}, dumps=_dumps)


async def post_history(request: web.Request) -> web.Response:
    return await _clear_or_delete(request, _server(request).history)


async def get_object_info(request: web.Request) -> web.Response:
    srv = _server(request)
    info = await asyncio.to_thread(srv.registry.object_info, srv.env)
    return web.json_response(info, dumps=_dumps)


async def get_object_info_one(request: web.Request) -> web.Response:
    srv = _server(request)
    name = request.match_info["node_class"]
    ndef = srv.registry.get(name)
    if ndef is None:
        return web.json_response({})
    return web.json_response({name: ndef.object_info(srv.env)}, dumps=_dumps)


async def get_plugins(request: web.Request) -> web.Response:
    """The plugin packs, as `latentgraph nodes --plugins --json` prints them."""
    return web.json_response([p.to_json() for p in _server(request).registry.plugins], dumps=_dumps)


async def get_system_stats(request: web.Request) -> web.Response:
    import platform

    import torch

    total, free = _memory()
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free_b, total_b = torch.cuda.mem_get_info(i)
            devices.append({"name": f"cuda:{i} {torch.cuda.get_device_name(i)}", "type": "cuda", "index": i,
                            "vram_total": total_b, "vram_free": free_b,
                            "torch_vram_total": torch.cuda.memory_reserved(i),
                            "torch_vram_free": torch.cuda.memory_reserved(i) - torch.cuda.memory_allocated(i)})
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": total, "vram_free": free,
                        "torch_vram_total": total, "torch_vram_free": free})
    return web.json_response({
        "system": {"os": sys.platform, "ram_total": total, "ram_free": free, "comfyui_version": VERSION,
                   "latentgraph_version": VERSION, "required_frontend_version": "1.58.1",
                   "python_version": sys.version, "pytorch_version": torch.__version__,
                   "embedded_python": False, "argv": list(sys.argv), "platform": platform.platform()},
        "devices": devices})


def _memory() -> tuple[int, int]:
    """Total and available RAM in bytes (Linux /proc/meminfo; sysconf elsewhere)."""
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        import os

        try:
            page = os.sysconf("SC_PAGE_SIZE")
            return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 0, 0


async def get_embeddings(request: web.Request) -> web.Response:
    names = _server(request).env.list_models("embeddings")
    return web.json_response(sorted({n.rsplit(".", 1)[0] for n in names}))


async def get_models(request: web.Request) -> web.Response:
    return web.json_response(list(MODEL_FOLDERS))


async def get_models_folder(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in MODEL_FOLDERS:
        raise web.HTTPNotFound(text=f"unknown model folder {folder!r}")
    return web.json_response(_server(request).env.list_models(folder))


async def get_features(request: web.Request) -> web.Response:
    return web.json_response(_server(request).features())


async def post_free(request: web.Request) -> web.Response:
    body = await _json_body(request, optional=True)
    _server(request).free(bool(body.get("unload_models")), bool(body.get("free_memory")))
    return web.Response(status=200)


async def websocket(request: web.Request) -> web.WebSocketResponse:
    try:
        return await serve_socket(_server(request), request)
    except BadInput as exc:
        raise _bad_request("invalid_request", str(exc)) from None


# -- the application ------------------------------------------------------------------------
ROUTES = [
    ("POST", "/prompt", post_prompt), ("GET", "/prompt", get_prompt),
    ("GET", "/queue", get_queue), ("POST", "/queue", post_queue),
    ("POST", "/interrupt", post_interrupt),
    ("GET", "/history", get_history), ("GET", "/history/{prompt_id}", get_history_item),
    ("POST", "/history", post_history),
    ("GET", "/object_info", get_object_info), ("GET", "/object_info/{node_class:.+}", get_object_info_one),
    ("GET", "/plugins", get_plugins),
    ("GET", "/system_stats", get_system_stats), ("GET", "/embeddings", get_embeddings),
    ("GET", "/models", get_models), ("GET", "/models/{folder}", get_models_folder),
    ("GET", "/features", get_features), ("POST", "/free", post_free),
    ("GET", "/ws", websocket),
]


def create_app(registry=None, env: Environment | None = None, *, services: dict | None = None,
               user_dir: str | Path | None = None, max_upload_mb: float = 100.0,
               previews: bool = True, frontend: str | Path | None = "auto", executor=None,
               docs: str | Path | None = "auto", preview_method: str = "auto", preview_size: int = 512
               ) -> web.Application:
    """The server as an aiohttp Application: every route at its path and under ``/api``, the
    worker thread and the message publisher started and stopped with the app; with a
    frontend (``auto``: the installed comfyui-frontend-package; ``none``; or a folder), ``/``
    serves it; ``docs`` (the same choices, comfyui-embedded-docs) is served at ``/docs``.
    ``preview_method`` (nodes/preview.py's METHODS) is the default of prompts that name none;
    previews are shrunk to ``preview_size`` pixels on their longest side."""
    if registry is None:
        from ..nodes import create_registry

        registry = create_registry()
    env = env or Environment()
    if services is None:
        from ..nodes import create_services

        services = create_services(env)
    user_dir = Path(user_dir) if user_dir is not None else env.output_dir.parent / "user"
    max_bytes = int(round(max_upload_mb * 1024 * 1024))
    try:
        srv = Server(registry, env, services, user_dir, max_bytes, previews, executor, preview_method, preview_size)
    except OSError as exc:  # the queue journal cannot be opened: say so as the CLI says bad options
        raise ValueError(str(exc)) from None
    app = web.Application(client_max_size=max_bytes, middlewares=[origin_check, cache_headers])
    app[SERVER] = srv
    comfy_compat.bind(env=env, server=srv)  # what ComfyUI packs reach through folder_paths and PromptServer
    srv.app = app
    files = FileRoutes(lambda: srv.env)
    front = app[FRONTEND] = FrontendRoutes(user_dir, find_frontend(frontend))
    packs = ExtensionRoutes(getattr(registry, "plugins", []), front.extension_scripts, front.web_root)
    routes = ROUTES + files.routes() + jobs.JobRoutes(srv).routes() + front.routes() + packs.routes()
    routes += ModelLibrary(lambda: srv.env).routes()
    routes += PackTemplates(getattr(registry, "plugins", [])).routes()
    for method, path, handler in routes:
        app.router.add_route(method, "/api" + path, handler)
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    logs.install(app, srv)  # /internal/* at the root only, as ComfyUI; the log capture
    _add_pack_routes(app, {(m, p) for m, p, _ in routes})
    TemplateRoutes(registry).install(app)  # /templates/* at the root only, before / shadows it
    install_docs(app, find_docs(docs))  # /docs/* at the root only, as ComfyUI; before / shadows it
    front.install_static(app)
    app.cleanup_ctx.append(_lifecycle)
    return app


def _add_pack_routes(app: web.Application, taken: set) -> None:
    """The routes ComfyUI packs added with ``PromptServer.instance.routes`` (at their path and
    under /api, as ComfyUI); one that would replace a route of ours is skipped with a warning."""
    for method, path, handler in comfy_compat.pack_routes():
        for where in (path, "/api" + path):
            if (method, where) in taken or (method == "GET" and ("HEAD", where) in taken):
                log.warning("a custom-node pack's route %s %s is not served: latentgraph serves that path", method, where)
                continue
            try:
                app.router.add_route(method, where, handler)
            except (RuntimeError, ValueError) as exc:  # a duplicate or a malformed path
                log.warning("a custom-node pack's route %s %s is not served: %s", method, where, exc)
                continue
            taken.add((method, where))


async def _lifecycle(app: web.Application):
    srv = app[SERVER]
    srv.loop = asyncio.get_running_loop()
    srv.outbox = asyncio.Queue()
    publisher = asyncio.create_task(srv.sender())
    threads = [threading.Thread(target=srv.worker, name=f"latentgraph-worker-{i}", daemon=True)
               for i in range(srv.parallel)]
    for thread in threads:
        thread.start()
    yield
    srv.stop()
    for thread in threads:
        await asyncio.to_thread(thread.join, 30)
    if hasattr(srv.executor, "close"):
        await asyncio.to_thread(srv.executor.close)
    publisher.cancel()
    for client in list(srv.sockets.values()):
        try:  # a polite close, but never wait on a client that does not answer
            await asyncio.wait_for(client.ws.close(), 2)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            srv.drop(client, None)
        if client.task is not None:
            client.task.cancel()
    if srv.queue.journal is not None:
        srv.queue.journal.close()
    srv.loop = None


def wait_until_listening(port: int, host: str = "127.0.0.1", timeout: float = 60.0, process=None) -> None:
    """For scripts and tests that start ``latentgraph serve``: return once the port accepts
    connections; RuntimeError if ``process`` (a Popen) exits first or the time runs out."""
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"the server exited with code {process.returncode}") from None
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
