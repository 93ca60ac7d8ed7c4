"""Websockets: one bounded queue and one writer task per socket, fed by one publisher task
that never waits on a socket. A client that stops reading fills only its own queue (or times
out its own send) and is dropped; the others keep their messages. Whatever kills the publisher
is logged and it restarts."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from .limits import BadInput, optional_id, parse_json

log = logging.getLogger("latentgraph.server")


@dataclass(eq=False)
class Client:
    """One websocket: its own bounded queue and writer task, so a client that stops reading
    only ever stalls itself."""

    sid: str
    ws: web.WebSocketResponse
    transport: Any  # asyncio transport, aborted when the socket is dropped
    queue: asyncio.Queue
    task: asyncio.Task | None = None


class SocketHub:
    """The websocket side of the server: ``sockets`` (sid -> Client), their feature flags, and
    the sender that moves ``outbox`` messages into each socket's own queue."""

    sockets: dict
    socket_flags: dict
    outbox: asyncio.Queue | None
    send_timeout: float

    async def sender(self) -> None:
        """The publisher, restarted (and the crash logged) whatever kills it."""
        while True:
            try:
                await self.publisher()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the websocket sender crashed; restarting it")

    async def publisher(self) -> None:
        """Hand each queued message to its sockets' own queues, in order; never waits on a socket."""
        while True:
            kind, payload, sid = await self.outbox.get()
            targets = list(self.sockets.values()) if sid is None else [self.sockets.get(sid)]
            targets = [c for c in targets if c is not None and not c.ws.closed]
            if not targets:
                continue
            data = json.dumps(payload, default=str) if kind == "json" else payload
            for client in targets:
                try:
                    client.queue.put_nowait(data)
                except asyncio.QueueFull:
                    self.drop(client, f"{client.queue.maxsize} messages are waiting for it (not reading)")

    async def writer(self, client: Client) -> None:
        """Send one socket's messages; a send that takes longer than send_timeout drops it."""
        try:
            while True:
                data = await client.queue.get()
                send = client.ws.send_str(data) if isinstance(data, str) else client.ws.send_bytes(data)
                await asyncio.wait_for(send, self.send_timeout)
        except asyncio.TimeoutError:
            self.drop(client, f"a message took more than {self.send_timeout:g} s to send (not reading)")
        except (ConnectionError, RuntimeError):
            self.drop(client, None)  # closed under us: nothing to report
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the sender of websocket %s failed", client.sid)
            self.drop(client, None)

    def drop(self, client: Client, why: str | None) -> None:
        """Forget a socket and cut its connection (a close handshake could wait on it forever)."""
        if why is not None:
            log.warning("dropping websocket %s: %s", client.sid, why)
        if self.sockets.get(client.sid) is client:
            self.sockets.pop(client.sid, None)
            self.socket_flags.pop(client.sid, None)
        if client.task is not None and client.task is not asyncio.current_task():
            client.task.cancel()
        if client.transport is not None:
            client.transport.abort()

async def serve_socket(srv, request: web.Request) -> web.WebSocketResponse:
    """GET /ws: register the socket, greet it, read what it sends until it closes (BadInput
    for a clientId that is not acceptable, before the upgrade)."""
    sid = optional_id(request.query.get("clientId"), "clientId") or uuid.uuid4().hex
    ws = web.WebSocketResponse(max_msg_size=1 << 20)
    await ws.prepare(request)
    client = Client(sid, ws, request.transport, asyncio.Queue(srv.socket_queue))
    old = srv.sockets.get(sid)
    if old is not None:
        srv.drop(old, None)  # the same client reconnected: the new socket takes over
    # registered and greeted with no await in between, so the status message is always first
    srv.sockets[sid] = client
    srv.socket_flags[sid] = {}
    client.queue.put_nowait(json.dumps({"type": "status", "data": {**srv.status(), "sid": sid}}))
    for node in srv.running_nodes(sid):
        client.queue.put_nowait(json.dumps({"type": "executing", "data": {"node": node}}))
    client.task = asyncio.create_task(srv.writer(client))
    try:
        await _read_socket(srv, client)
    finally:
        if srv.sockets.get(sid) is client:
            srv.sockets.pop(sid, None)
            srv.socket_flags.pop(sid, None)
        client.task.cancel()
    return ws


async def _read_socket(srv, client: Client) -> None:
    """What a client sends: only its first message matters (ComfyUI's feature_flags)."""
    first = True
    async for msg in client.ws:
        if msg.type == WSMsgType.TEXT:
            try:
                data = parse_json(msg.data)
            except BadInput as exc:
                log.warning("websocket %s sent a message that is not acceptable JSON: %s", client.sid, exc)
                continue
            if first and isinstance(data, dict) and data.get("type") == "feature_flags":
                flags = data.get("data")
                srv.socket_flags[client.sid] = flags if isinstance(flags, dict) else {}
                try:
                    client.queue.put_nowait(json.dumps({"type": "feature_flags", "data": srv.features()}))
                except asyncio.QueueFull:
                    srv.drop(client, "its queue is full")
            first = False
        elif msg.type == WSMsgType.ERROR:
            log.warning("websocket %s closed with %s", client.sid, client.ws.exception())
