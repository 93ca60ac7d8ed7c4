"""The server's text streams: the log terminal behind ComfyUI's ``/internal`` routes, and the
binary frame of a node's progress text.

Log records reaching the root logger (latentgraph's own and every custom-node pack's) are
kept while the app runs, the last 300, as ComfyUI's entries ``{"t": ISO time, "m": text}``.
``GET /internal/logs`` and ``/internal/logs/raw`` read them; a websocket client that sends
``PATCH /internal/logs/subscribe`` gets the new ones as ``logs`` messages, a batch at a time.
Only logging records are captured: ComfyUI also wraps the process's stdout and stderr (so a
pack's ``print`` shows in its terminal too), which latentgraph leaves alone.

The ``/internal`` routes are ComfyUI's "for the frontend only" ones: mounted at their path,
never under ``/api``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import threading
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from ..graph.env import FOLDER_TYPES
from .limits import BadInput, parse_json
from .model_library import folder_table

CAPACITY = 300  # log entries kept, as ComfyUI
FLUSH_DELAY = 0.1  # seconds new entries wait, to go out to subscribers as one message
BINARY_TEXT = 3  # ComfyUI's binary event type of a node's progress text


def progress_text_frame(node_id: str, text: str | bytes) -> bytes:
    """ComfyUI's progress-text frame: u32 type 3, u32 length of the node id, the node id, the
    text (big-endian, UTF-8)."""
    body = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    node = str(node_id).encode("utf-8")
    return struct.pack(">II", BINARY_TEXT, len(node)) + node + body


def elapsed(seconds: float) -> str:
    """A run's time as ComfyUI logs it: "12.34 seconds", or H:M:S past ten minutes."""
    if seconds > 600:
        return time.strftime("%H:%M:%S", time.gmtime(seconds))
    return f"{seconds:.2f} seconds"


class LogTerminal(logging.Handler):
    """The last ``capacity`` log records as entries, and the websocket clients that asked for
    new ones (by client id). ``server`` sends messages (``send(kind, data, sid)``, any
    thread) and knows the connected clients (``sockets``)."""

    def __init__(self, server: Any, capacity: int = CAPACITY):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))
        self.server = server
        self.entries: deque[dict] = deque(maxlen=capacity)
        self.subscriptions: set[str] = set()
        self.cols: int | None = None
        self.rows: int | None = None
        self._unsent: list[dict] = []
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False

    # -- capture (any thread) ---------------------------------------------------------------
    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.fromtimestamp(record.created).isoformat(), "m": self.format(record) + "\n"}
        except Exception:
            self.handleError(record)
            return
        with self._guard:
            self.entries.append(entry)
            if not self.subscriptions:
                return
            self._unsent.append(entry)
            if self._scheduled or self._loop is None:
                return
            self._scheduled, loop = True, self._loop
        try:
            loop.call_soon_threadsafe(loop.call_later, FLUSH_DELAY, self.send_new)
        except RuntimeError:  # the loop closed
            with self._guard:
                self._scheduled = False

    def snapshot(self) -> list[dict]:
        with self._guard:
            return list(self.entries)

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The event loop new entries are sent from (None: keep them, send nothing)."""
        with self._guard:
            self._loop, self._scheduled = loop, False

    # -- subscribers (the event loop) --------------------------------------------------------
    def subscribe(self, sid: str, enabled: bool) -> None:
        with self._guard:
            if enabled:
                self.subscriptions.add(sid)
            else:
                self.subscriptions.discard(sid)

    def send_new(self) -> None:
        """Send the entries logged since the last batch to each subscriber still connected (a
        gone one is unsubscribed); ``size`` is the terminal's size when it changed, else null."""
        with self._guard:
            entries, self._unsent, self._scheduled = self._unsent, [], False
            sids = list(self.subscriptions)
        if not entries or not sids:
            return
        size = self.update_size()
        for sid in sids:
            if sid in self.server.sockets:
                self.server.send("logs", {"entries": entries, "size": size}, sid)
            else:
                self.subscribe(sid, False)

    def update_size(self) -> dict | None:
        """Read the terminal's size; the new one when it changed, else None."""
        cols, rows = shutil.get_terminal_size((80, 24))
        if (cols, rows) == (self.cols, self.rows):
            return None
        self.cols, self.rows = cols, rows
        return {"cols": cols, "rows": rows}


class InternalRoutes:
    """ComfyUI's /internal routes over one server: logs, folders, the files of a folder type."""

    def __init__(self, server: Any):
        self.server = server
        self.terminal = LogTerminal(server)

    def routes(self) -> list[tuple]:
        return [("GET", "/internal/logs", self.get_logs), ("GET", "/internal/logs/raw", self.get_raw_logs),
                ("PATCH", "/internal/logs/subscribe", self.subscribe_logs),
                ("GET", "/internal/folder_paths", self.get_folder_paths),
                ("GET", "/internal/files/{directory_type}", self.get_files)]

    async def capture(self, app: web.Application):
        """cleanup_ctx: capture the root logger's records while the app runs (and only then, so
        apps made one after another never pile up handlers)."""
        self.terminal.attach(asyncio.get_running_loop())
        root = logging.getLogger()
        root.addHandler(self.terminal)
        try:
            yield
        finally:
            root.removeHandler(self.terminal)
            self.terminal.attach(None)

    async def get_logs(self, request: web.Request) -> web.Response:
        """The entries as one JSON string: each "time - message" (messages end their lines)."""
        return web.json_response("".join(e["t"] + " - " + e["m"] for e in self.terminal.snapshot()))

    async def get_raw_logs(self, request: web.Request) -> web.Response:
        self.terminal.update_size()
        size = {"cols": self.terminal.cols, "rows": self.terminal.rows}
        return web.json_response({"entries": self.terminal.snapshot(), "size": size})

    async def subscribe_logs(self, request: web.Request) -> web.Response:
        """``{"clientId": sid, "enabled": bool}``: start or stop sending ``logs`` messages."""
        try:
            body = parse_json(await request.read())
        except BadInput as exc:
            raise web.HTTPBadRequest(text=f"the body is not acceptable JSON: {exc}") from None
        sid = body.get("clientId") if isinstance(body, dict) else None
        if not isinstance(sid, str) or not sid:
            raise web.HTTPBadRequest(text="clientId must be a websocket client id")
        self.terminal.subscribe(sid, bool(body.get("enabled")))
        return web.Response(status=200)

    async def get_folder_paths(self, request: web.Request) -> web.Response:
        """Each model folder name -> its folders: the model library's table."""
        return web.json_response(folder_table(self.server.env))

    async def get_files(self, request: web.Request) -> web.Response:
        """The files directly in the output, input or temp folder, newest first."""
        kind = request.match_info["directory_type"]
        if kind not in FOLDER_TYPES:
            return web.json_response({"error": "Invalid directory type"}, status=400)
        names = await asyncio.to_thread(newest_first, self.server.env.folder_of(kind))
        return web.json_response(names)


def newest_first(folder: Path) -> list[str]:
    """The names of the files directly in ``folder``, the last modified first (none if it is missing)."""
    found = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                try:
                    if entry.is_file():
                        found.append((entry.stat().st_mtime, entry.name))
                except OSError:  # gone since it was listed
                    continue
    except OSError:
        return []
    return [name for _, name in sorted(found, key=lambda f: -f[0])]


INTERNAL = web.AppKey("latentgraph_internal", InternalRoutes)


def install(app: web.Application, server: Any) -> InternalRoutes:
    """Mount the /internal routes (at their path only) and capture logs while ``app`` runs."""
    internal = app[INTERNAL] = InternalRoutes(server)
    for method, path, handler in internal.routes():
        app.router.add_route(method, path, handler)
    app.cleanup_ctx.append(internal.capture)
    return internal
