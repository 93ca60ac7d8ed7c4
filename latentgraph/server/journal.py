"""The queue journal: every pending and running prompt in a small SQLite file, written before
the prompt is acknowledged, so a server killed at any moment (kill -9, power loss) comes back
with its queue. SQLite rather than an append-only file: each change is one fsynced transaction,
deleting a prompt from the middle of the queue needs no rewrite, and a torn last write is rolled
back by SQLite itself instead of leaving a half line to skip.

Credentials in extra_data (``SENSITIVE_KEYS``) never reach the journal; a prompt re-queued
after a restart runs without them."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger("latentgraph.server")

JOURNAL_FILE = "queue.sqlite3"
_SCHEMA = """CREATE TABLE IF NOT EXISTS prompts (
    prompt_id TEXT PRIMARY KEY,
    number REAL NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,          -- 'pending' or 'running'
    body TEXT NOT NULL            -- JSON: prompt, extra_data, outputs
)"""


class JournalError(OSError):
    """The journal cannot be read or written (disk full, permissions, a corrupt file)."""


class Journal:
    """The pending and running prompts of one server, in ``path``. Thread-safe."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit mode: each statement below is its own durable transaction
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open the queue journal {self.path}: {exc}") from None

    def _run(self, sql: str, args=()) -> list:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot update the queue journal {self.path}: {exc}") from None

    def add(self, item) -> None:
        """Record a queued prompt (raises JournalError: the caller must not queue it then)."""
        body = json.dumps({"prompt": item.prompt, "extra_data": item.extra_data, "outputs": item.outputs})
        self._run("INSERT OR REPLACE INTO prompts VALUES (?, ?, ?, 'pending', ?)",
                  (item.prompt_id, float(item.number), item.seq, body))

    def running(self, prompt_id: str) -> None:
        self._run("UPDATE prompts SET state = 'running' WHERE prompt_id = ?", (prompt_id,))

    def remove(self, prompt_ids) -> None:
        for pid in prompt_ids:
            self._run("DELETE FROM prompts WHERE prompt_id = ?", (pid,))

    def load(self) -> list[dict]:
        """Every recorded prompt in queue order: dicts with prompt_id, number, seq, state, prompt,
        extra_data, outputs. A row that cannot be read is dropped with a warning."""
        rows = self._run("SELECT prompt_id, number, seq, state, body FROM prompts ORDER BY number, seq")
        found = []
        for pid, number, seq, state, body in rows:
            try:
                data = json.loads(body)
                record = {"prompt_id": pid, "number": number, "seq": seq, "state": state,
                          "prompt": data["prompt"], "extra_data": data["extra_data"], "outputs": data["outputs"]}
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("dropping unreadable prompt %s from the queue journal %s: %s", pid, self.path, exc)
                self.remove([pid])
                continue
            found.append(record)
        return found

    def close(self) -> None:
        with self._lock:
            self._db.close()
