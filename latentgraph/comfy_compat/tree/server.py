"""ComfyUI's ``server``: ``PromptServer.instance`` for packs, over latentgraph's server.

``send_sync`` reaches the websocket clients of ``latentgraph serve`` (nobody when a workflow
runs from the CLI); routes a pack adds with ``PromptServer.instance.routes`` at import are
served by ``latentgraph serve`` (also under /api, as ComfyUI); ``client_id`` and
``last_node_id`` are those of the running prompt and node.
"""

from __future__ import annotations

import logging
import struct
from typing import Any, Callable

from aiohttp import web

from latentgraph.comfy_compat import runtime

log = logging.getLogger("latentgraph.comfy_compat")


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class PromptQueue:
    """``PromptServer.instance.prompt_queue`` over latentgraph's queue: what runs now (ComfyUI's
    6-element entries), what waits, and ``put`` for packs that queue a prompt again (Video
    Helper Suite's batch manager). Without ``latentgraph serve`` there is no queue: empty, and
    ``put`` is refused."""

    @property
    def _server(self):
        return runtime.current_server()

    @property
    def currently_running(self) -> dict:
        server = self._server
        active = list(getattr(server, "active", {}).values()) if server is not None else []
        return {i: _entry(item) for i, (item, _node) in enumerate(active)}

    def get_current_queue(self) -> tuple[list, list]:
        server = self._server
        if server is None:
            return [], []
        return [_entry(i) for i in server.queue.running()], [_entry(i) for i in server.queue.pending()]

    def get_current_queue_volatile(self) -> tuple[list, list]:
        return self.get_current_queue()

    def get_tasks_remaining(self) -> int:
        server = self._server
        return server.queue.remaining() if server is not None else 0

    def put(self, item) -> None:
        """Queue ``(number, prompt_id, prompt, extra_data, outputs_to_execute[, sensitive])``."""
        server = self._server
        if server is None:
            raise RuntimeError("there is no prompt queue outside 'latentgraph serve'")
        number, prompt_id, prompt, extra_data, outputs = tuple(item)[:5]
        server.queue.put(number, prompt_id, prompt, extra_data, list(outputs))

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise runtime.missing("server.PromptServer.instance.prompt_queue", name)


def _entry(item) -> tuple:
    return (*item.as_list(), dict(item.sensitive))


class PromptServer:
    """The one instance packs talk to (``PromptServer.instance``)."""

    instance: "PromptServer"

    def __init__(self):
        self.routes = web.RouteTableDef()
        self.supports = ["custom_nodes_from_web"]
        self.on_prompt_handlers: list[Callable] = []
        self.number = 0
        self.prompt_queue = PromptQueue()

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise runtime.missing("server.PromptServer.instance", name)

    # -- what the bound latentgraph server knows -------------------------------------------
    @property
    def _server(self):
        return runtime.current_server()

    @property
    def app(self):
        server = self._server
        return getattr(server, "app", None)

    @property
    def loop(self):
        server = self._server
        return getattr(server, "loop", None)

    @property
    def client_id(self) -> str | None:
        """The client that queued the running prompt (None outside a run or from the CLI)."""
        ctx, server = runtime.current_node(), self._server
        active = getattr(server, "active", {}) if server is not None else {}
        entry = active.get(getattr(ctx, "prompt_id", None)) if ctx is not None else None
        return (entry[0].extra_data.get("client_id") or None) if entry else None

    @property
    def last_node_id(self) -> str | None:
        ctx = runtime.current_node()
        return getattr(ctx, "node_id", None)

    # -- sending ---------------------------------------------------------------------------
    def send_sync(self, event: Any, data: Any, sid: str | None = None) -> None:
        """A message to client ``sid`` (everyone when None): JSON, or bytes for a binary event
        type (its 4-byte big-endian type first, as ComfyUI frames it)."""
        server = self._server
        if server is None:
            return
        if isinstance(data, (bytes, bytearray)):
            server.send_binary(struct.pack(">I", int(event)) + bytes(data), sid)
        elif event == BinaryEventTypes.UNENCODED_PREVIEW_IMAGE:
            log.debug("a pack sent an unencoded preview; previews go through ProgressBar here")
        else:
            server.send(str(event), data, sid)

    async def send(self, event: Any, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    def send_progress_text(self, text: str | bytes, node_id: str, sid: str | None = None) -> None:
        from latentgraph.server.logs import progress_text_frame  # the frame the server sends for nodes too

        server = self._server
        if server is not None:
            server.send_binary(progress_text_frame(node_id, text), sid)

    def queue_updated(self) -> None:
        """Accepted: latentgraph's queue tells the clients itself."""

    # -- prompts ---------------------------------------------------------------------------
    def add_on_prompt_handler(self, handler: Callable[[dict], dict]) -> None:
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data: dict) -> dict:
        """Each handler may rewrite a /prompt request's JSON; one that raises is logged and skipped."""
        for handler in self.on_prompt_handlers:
            try:
                json_data = handler(json_data)
            except Exception:  # noqa: BLE001 - a pack's handler must not refuse the prompt
                log.warning("an on_prompt handler of a pack failed", exc_info=True)
        return json_data


PromptServer.instance = PromptServer()
