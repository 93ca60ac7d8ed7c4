"""`latentgraph serve` with ComfyUI's frontend in a child process, for the browser tests: a
returning user's settings (no first-run dialog), folders under one home, a free loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from latentgraph.server import wait_until_listening

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(home: Path, *options: str, env: dict | None = None):
    """Yield the URL of a server whose output, user, models and input folders are in ``home``
    (more ``serve`` options, and the process's environment, as given)."""
    settings = home / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    port = free_port()
    log_path = home / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "latentgraph", "serve", "--port", str(port), "--frontend",
                                 "auto", "--output-dir", str(home / "output"), "--user-dir", str(home / "user"),
                                 "--models-dir", str(home / "models"), "--input-dir", str(home / "input"),
                                 "--device", "cpu", *options], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_until_listening(port, process=proc)
            except RuntimeError as exc:
                pytest.fail(f"{exc}: {log_path.read_text()}")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)
