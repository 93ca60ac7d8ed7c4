"""Per-node progress of one run, as ComfyUI's progress registry reports it: the event
``progress_state`` lists every node of the run that has started (pending ones are left out),
each running (value of max) or finished (value = max)."""

from __future__ import annotations

import threading
from typing import Callable

RUNNING, FINISHED = "running", "finished"


class ProgressStates:
    """The state of each node of one run; every change is emitted, with all of them.

    ``ids(node)`` gives the node's (display_node_id, parent_node_id, real_node_id); a report
    that changes nothing (the same value and max again) is not sent again.
    """

    def __init__(self, prompt_id: str, emit: Callable[[str, dict], None],
                 ids: Callable[[str], tuple[str, str | None, str]]):
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict] = {}
        self._emit = emit
        self._ids = ids
        self._lock = threading.RLock()  # progress may come from a node's own threads

    def start(self, node_id: str) -> None:
        """The node began to run: running, 0 of 1 (as ComfyUI's start_progress)."""
        self._set(node_id, RUNNING, 0.0, 1.0)

    def update(self, node_id: str, value: float, max_value: float) -> None:
        """A progress report of the node: running, ``value`` of ``max_value``."""
        self._set(node_id, RUNNING, value, max_value)

    def finish(self, node_id: str) -> None:
        """The node ran or came from the cache: finished, its value at its max."""
        entry = self.nodes.get(node_id)
        top = entry["max"] if entry is not None else 1.0
        self._set(node_id, FINISHED, top, top)

    def _set(self, node_id: str, state: str, value: float, max_value: float) -> None:
        new = {"state": state, "value": value, "max": max_value}
        with self._lock:
            if self.nodes.get(node_id) == new:
                return
            self.nodes[node_id] = new
            self._emit("progress_state", self.message())

    def message(self) -> dict:
        """ComfyUI's progress_state data: {prompt_id, nodes: {id: {value, max, state, ...}}}."""
        nodes = {}
        for node_id, entry in self.nodes.items():
            display, parent, real = self._ids(node_id)
            nodes[node_id] = {"value": entry["value"], "max": entry["max"], "state": entry["state"],
                              "node_id": node_id, "prompt_id": self.prompt_id, "display_node_id": display,
                              "parent_node_id": parent, "real_node_id": real}
        return {"prompt_id": self.prompt_id, "nodes": nodes}
