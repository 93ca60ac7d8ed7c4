"""ComfyUI's own web frontend (comfyui-frontend-package 1.58.1) boots against `latentgraph serve`
in headless Chromium, loads the txt2img workflow, queues it, and the output image appears.
A screenshot is kept in test-artifacts/frontend.png.

Needs Debian's chromium (/usr/bin/chromium), the PyPI playwright package and the frontend
package (`pip install -e '.[frontend]' playwright`); .ci/run installs them and runs this file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from latentgraph.server import wait_until_listening

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    pytest.importorskip("comfyui_frontend_package", reason="pip install 'latentgraph[frontend]'")
    port = free_port()
    (tmp_path / "user" / "default").mkdir(parents=True)  # a returning user: no first-run templates dialog
    (tmp_path / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "latentgraph", "serve", "--port", str(port), "--frontend", "auto",
                             "--output-dir", str(tmp_path / "output"), "--user-dir", str(tmp_path / "user"),
                             "--models-dir", str(tmp_path / "models"), "--input-dir", str(tmp_path / "input"),
                             "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_until_listening(port, process=proc)
        except RuntimeError as exc:
            pytest.fail(f"{exc}: {(tmp_path / 'serve.log').read_text()}")
        yield f"http://127.0.0.1:{port}", tmp_path
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_the_comfyui_frontend_runs_a_workflow(server):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    url, home = server
    workflow = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.app.api && window.app.api.clientId",
                                   timeout=120_000)
            page.evaluate("(wf) => window.app.loadApiJson(wf, 'txt2img.json')", workflow)
            page.wait_for_function("() => window.app.graph.nodes.some(n => n.type === 'KSampler')", timeout=30_000)
            with page.expect_response(lambda r: "/view?" in r.url and "txt2img_00001_.png" in r.url,
                                      timeout=120_000) as shown:
                page.evaluate("() => window.app.queuePrompt(0, 1)")
            response = shown.value
            assert response.status == 200
            body = response.body()
            assert body[:8] == b"\x89PNG\r\n\x1a\n"
            saved = home / "output" / "txt2img_00001_.png"
            assert saved.read_bytes() == body
            page.keyboard.press("Escape")
            page.wait_for_timeout(1500)
            page.screenshot(path=str(ARTIFACTS / "frontend.png"))
            history = page.evaluate("() => fetch('/api/history').then(r => r.json())")
            (entry,) = history.values()
            assert entry["status"]["status_str"] == "success"
            assert "workflow" in entry["prompt"][3]["extra_pnginfo"]  # the frontend sent its UI graph
        finally:
            browser.close()
