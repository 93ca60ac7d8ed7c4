"""The prompt queue and the history, as ComfyUI keeps them, with two differences: history
entries exist from the moment a prompt starts (status "running", with its progress) and every
finished entry is written to disk, so the history outlives the server.

Thread-safe: the HTTP handlers add and delete from the event loop while the worker thread
takes prompts and records what happened.
"""

from __future__ import annotations

import heapq
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..graph.fileio import write_atomic

log = logging.getLogger("latentgraph.server")

MAX_HISTORY = 10_000  # ComfyUI's MAXIMUM_HISTORY_SIZE
# extra_data keys that carry credentials: kept for the run, never shown or stored (as ComfyUI)
SENSITIVE_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


@dataclass(order=True)
class QueueItem:
    """One queued prompt. Ordered by number (lower runs first), then by arrival."""

    number: float
    seq: int
    prompt_id: str = field(compare=False)
    prompt: dict = field(compare=False)
    extra_data: dict = field(compare=False)
    outputs: list[str] = field(compare=False)  # the output nodes to run
    sensitive: dict = field(compare=False, default_factory=dict, repr=False)

    def as_list(self) -> list:
        """ComfyUI's 5-element form: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        number = int(self.number) if float(self.number).is_integer() else self.number
        return [number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


class PromptQueue:
    """Pending prompts in a heap, the running one aside; ``get`` blocks the worker."""

    def __init__(self, journal=None) -> None:
        self.journal = journal  # a Journal: pending and running prompts survive a crash
        self._heap: list[QueueItem] = []
        self._running: dict[str, QueueItem] = {}
        self._cond = threading.Condition()
        self._counter = 0  # ComfyUI's prompt number counter
        self._seq = 0
        self._closed = False
        self.on_change: list = []  # callbacks () -> None, called after every change

    def next_number(self, front: bool = False, number: Any = None) -> float:
        """ComfyUI's numbering: an explicit number as given (float); otherwise the counter,
        negated for ``front``, and the counter moves on."""
        with self._cond:
            if number is not None:
                return float(number)
            n = self._counter
            self._counter += 1
            return -n if front else n

    def put(self, number: float, prompt_id: str, prompt: dict, extra_data: dict, outputs: list[str]) -> QueueItem:
        extra = dict(extra_data)
        sensitive = {k: extra.pop(k) for k in SENSITIVE_KEYS if k in extra}
        with self._cond:
            if any(i.prompt_id == prompt_id for i in self._heap) or prompt_id in self._running:
                raise ValueError(f"prompt_id {prompt_id!r} is already queued")
            item = QueueItem(number, self._seq + 1, prompt_id, prompt, extra, list(outputs), sensitive)
            if self.journal is not None:
                self.journal.add(item)  # JournalError: not queued, the caller says so
            self._seq += 1
            heapq.heappush(self._heap, item)
            self._cond.notify()
        self._changed()
        return item

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """The next prompt, now marked running; None on timeout or once closed."""
        with self._cond:
            end = None if timeout is None else time.monotonic() + timeout
            while not self._heap and not self._closed:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            if self._closed:
                return None
            item = heapq.heappop(self._heap)
            self._running[item.prompt_id] = item
        self._journal("running", item.prompt_id)
        self._changed()
        return item

    def done(self, item: QueueItem) -> None:
        with self._cond:
            self._running.pop(item.prompt_id, None)
        self._journal("remove", [item.prompt_id])
        self._changed()

    def restore(self, on_stopped=None) -> list[QueueItem]:
        """After a restart: the journal's pending prompts queued again, in their order and with
        their numbers. Those that were running when the server stopped are handed to
        ``on_stopped(item)`` (to record them) and then leave the journal; they are returned."""
        if self.journal is None:
            return []
        stopped = []
        with self._cond:
            for rec in self.journal.load():
                item = QueueItem(rec["number"], rec["seq"], rec["prompt_id"], rec["prompt"], rec["extra_data"],
                                 list(rec["outputs"]))
                self._seq = max(self._seq, item.seq)
                if item.number >= 0:  # new prompts are numbered after the restored ones
                    self._counter = max(self._counter, int(item.number) + 1)
                if rec["state"] == "running":
                    stopped.append(item)
                else:
                    heapq.heappush(self._heap, item)
            self._cond.notify_all()
        for item in stopped:
            if on_stopped is not None:
                on_stopped(item)
            self._journal("remove", [item.prompt_id])
        if stopped or self._heap:
            self._changed()
        return stopped

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def delete(self, prompt_ids) -> int:
        """Remove pending prompts (a running one is left alone, as in ComfyUI)."""
        wanted = set(prompt_ids)
        with self._cond:
            before = len(self._heap)
            gone = [i.prompt_id for i in self._heap if i.prompt_id in wanted]
            self._heap = [i for i in self._heap if i.prompt_id not in wanted]
            heapq.heapify(self._heap)
            removed = before - len(self._heap)
        self._journal("remove", gone)
        if removed:
            self._changed()
        return removed

    def clear(self) -> int:
        with self._cond:
            gone, self._heap = [i.prompt_id for i in self._heap], []
        removed = len(gone)
        self._journal("remove", gone)
        if removed:
            self._changed()
        return removed

    def running(self) -> list[QueueItem]:
        with self._cond:
            return list(self._running.values())

    def pending(self) -> list[QueueItem]:
        """Pending prompts in the order they will run."""
        with self._cond:
            return sorted(self._heap)

    def remaining(self) -> int:
        """ComfyUI's queue_remaining: pending plus running."""
        with self._cond:
            return len(self._heap) + len(self._running)

    def snapshot(self) -> dict:
        """GET /queue's body."""
        return {"queue_running": [i.as_list() for i in self.running()],
                "queue_pending": [i.as_list() for i in self.pending()]}

    def _journal(self, action: str, arg) -> None:
        """Keep the journal in step; a failure is logged, never stops the queue (at worst a
        restart shows a prompt that had already left)."""
        if self.journal is None or not arg:
            return
        try:
            getattr(self.journal, action)(arg)
        except OSError as exc:
            log.error("%s", exc)

    def _changed(self) -> None:
        for callback in list(self.on_change):
            try:
                callback()
            except Exception:  # a listener must not break the queue
                log.exception("queue change listener failed")


class History:
    """Entries keyed by prompt id, oldest first, at most ``max_items``. With a ``folder``,
    every finished entry is written there as ``<prompt_id>.json`` and read back on start."""

    def __init__(self, folder: str | Path | None = None, max_items: int = MAX_HISTORY) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.max_items = max_items
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, dict] = OrderedDict()
        if self.folder is not None:
            self._load()

    # -- recording (worker thread) -------------------------------------------------------
    def start(self, item: QueueItem) -> None:
        """A prompt began: its entry exists from now on, with status "running"."""
        entry = {"prompt": item.as_list(), "outputs": {}, "meta": {},
                 "status": {"status_str": "running", "completed": False, "messages": [], "progress": None},
                 "started": time.time()}
        with self._lock:
            self._entries.pop(item.prompt_id, None)
            self._entries[item.prompt_id] = entry
            self._trim()

    def message(self, prompt_id: str, kind: str, data: dict) -> None:
        """Record what the executor said: status messages, outputs, progress."""
        with self._lock:
            entry = self._entries.get(prompt_id)
            if entry is None:
                return
            status = entry["status"]
            if kind in ("execution_start", "execution_cached", "execution_success", "execution_error",
                        "execution_interrupted"):
                status["messages"].append([kind, data])
            if kind == "executed":
                node = data["node"]
                entry["outputs"][node] = data["output"]
                entry["meta"][node] = {"node_id": node, "display_node": data.get("display_node", node),
                                       "parent_node": None, "real_node_id": node}
            elif kind == "progress":
                status["progress"] = {"node": data.get("node"), "value": data["value"], "max": data["max"]}
            elif kind == "executing" and data.get("node") is not None:
                status["node"] = data["node"]

    def finish(self, prompt_id: str, success: bool) -> bool:
        """The prompt ended: ComfyUI's final status, then written to disk. False when the entry
        could not be written: the error is logged and recorded in the entry's status messages
        (``history_not_saved``), and the entry stays readable until the server stops."""
        with self._lock:
            entry = self._entries.get(prompt_id)
            if entry is None:
                return True
            status = entry["status"]
            status["status_str"] = "success" if success else "error"
            status["completed"] = success
            status.pop("progress", None)
            status.pop("node", None)
            entry["finished"] = time.time()
            try:
                text = json.dumps(entry, default=str)
            except (ValueError, TypeError, RecursionError) as exc:
                text, reason = None, f"its outputs are not JSON: {exc}"
        if text is not None:
            reason = self._write(prompt_id, text)
        if reason is None:
            return True
        log.error("cannot write the history entry of prompt %s: %s", prompt_id, reason)
        with self._lock:
            status["messages"].append(["history_not_saved", {
                "prompt_id": prompt_id, "timestamp": int(time.time() * 1000),
                "message": f"the history entry could not be written, it is lost at the next restart: {reason}"}])
        return False

    def stopped(self, item: QueueItem, message: str) -> None:
        """Record a prompt that was running when the server stopped: a finished entry with
        status "error" and ComfyUI's execution_error message saying why."""
        if self.get(item.prompt_id) is not None:
            return  # it finished and was written just before the stop
        self.start(item)
        stamp = int(time.time() * 1000)
        self.message(item.prompt_id, "execution_start", {"prompt_id": item.prompt_id, "timestamp": stamp})
        self.message(item.prompt_id, "execution_error", {
            "prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
            "exception_message": message, "exception_type": "ServerStopped", "traceback": [],
            "current_inputs": {}, "current_outputs": [], "timestamp": stamp})
        self.finish(item.prompt_id, False)

    # -- reading (HTTP handlers) ----------------------------------------------------------
    def get(self, prompt_id: str, include_running: bool = False) -> dict | None:
        with self._lock:
            entry = self._entries.get(prompt_id)
            if entry is None or (not include_running and entry["status"]["status_str"] == "running"):
                return None
            return self._public(entry)

    def items(self, max_items: int | None = None, offset: int = -1, include_running: bool = False) -> dict:
        """GET /history's body: oldest first; ``max_items`` alone gives the newest N, as in
        ComfyUI. Running entries only when asked (ComfyUI clients poll /history/{id} to learn
        that a prompt has finished)."""
        with self._lock:
            ids = [k for k, e in self._entries.items()
                   if include_running or e["status"]["status_str"] != "running"]
            if offset < 0 and max_items is not None:
                offset = len(ids) - max_items
            offset = max(offset, 0)
            chosen = ids[offset:] if max_items is None else ids[offset:offset + max_items]
            return {k: self._public(self._entries[k]) for k in chosen}

    def all_entries(self) -> list[tuple[str, dict]]:
        """Every entry with its internal times, for the jobs API."""
        with self._lock:
            return [(k, json.loads(json.dumps(e, default=str))) for k, e in self._entries.items()]

    def delete(self, prompt_ids) -> None:
        with self._lock:
            for pid in prompt_ids:
                self._entries.pop(pid, None)
        for pid in prompt_ids:
            self._unlink(pid)

    def clear(self) -> None:
        with self._lock:
            ids = [k for k, e in self._entries.items() if e["status"]["status_str"] != "running"]
            for pid in ids:
                del self._entries[pid]
        for pid in ids:
            self._unlink(pid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- internals ------------------------------------------------------------------------
    @staticmethod
    def _public(entry: dict) -> dict:
        out = {k: entry[k] for k in ("prompt", "outputs", "status", "meta")}
        return json.loads(json.dumps(out, default=str))

    def _trim(self) -> None:
        while len(self._entries) > self.max_items:
            old, _ = self._entries.popitem(last=False)
            self._unlink(old)

    def _path(self, prompt_id: str) -> Path | None:
        if self.folder is None or not prompt_id or "/" in prompt_id or "\\" in prompt_id or prompt_id.startswith("."):
            return None
        return self.folder / f"{prompt_id}.json"

    def _write(self, prompt_id: str, text: str) -> str | None:
        """None once written (or when there is no folder), else why not."""
        path = self._path(prompt_id)
        if path is None:
            return None
        try:
            write_atomic(path, text.encode())
        except OSError as exc:
            return f"{path}: {exc}"
        return None

    def _unlink(self, prompt_id: str) -> None:
        path = self._path(prompt_id)
        if path is not None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove history entry %s: %s", path, exc)

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        found = []
        for path in self.folder.glob("*.json"):
            try:
                entry = json.loads(path.read_text())
                found.append((float(entry.get("finished", 0.0)), path.stem, entry))
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable history entry %s: %s", path, exc)
        for _, pid, entry in sorted(found, key=lambda f: (f[0], f[1])):
            self._entries[pid] = entry
        self._trim()
