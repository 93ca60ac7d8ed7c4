"""The narrow object a running node receives: where it is, progress, interrupt, folders."""

from __future__ import annotations

import threading
from typing import Any, Callable

from .errors import Interrupted


class NodeContext:
    """Given to a node whose function has a parameter annotated ``NodeContext``.

    ``progress(i, n)`` reports a step (and is where an interrupt is noticed);
    ``progress_text(text)`` shows a line of text on the node in the client;
    ``env`` holds the folders and the device; ``services`` holds long-lived objects the
    front door shares across runs (model caches, say); ``extra_data`` is the run's (read it,
    never change it: ``preview_method``, say).
    """

    __slots__ = ("node_id", "class_type", "prompt_id", "env", "services", "_emit", "_stop", "extra_data")

    def __init__(self, node_id: str, class_type: str, prompt_id: str, env: Any,
                 services: dict, emit: Callable[[str, dict], None], stop: threading.Event,
                 extra_data: dict | None = None):
        self.extra_data = extra_data if extra_data is not None else {}  # the run's (preview_method, ...)
        self.node_id = node_id
        self.class_type = class_type
        self.prompt_id = prompt_id
        self.env = env
        self.services = services
        self._emit = emit
        self._stop = stop

    @property
    def device(self) -> str:
        return self.env.device

    def check_interrupt(self) -> None:
        """Raise Interrupted if the run was asked to stop."""
        if self._stop.is_set():
            raise Interrupted(self.node_id, self.class_type)

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report step ``value`` of ``total``; an optional preview image goes to listeners."""
        self.check_interrupt()
        data = {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id}
        if preview is not None:
            data["preview"] = preview
        self._emit("progress", data)

    def progress_text(self, text: str) -> None:
        """Show ``text`` on the node in the client (ComfyUI's progress text; event "progress_text")."""
        self._emit("progress_text", {"node": self.node_id, "text": str(text), "prompt_id": self.prompt_id})
