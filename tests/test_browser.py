"""ComfyUI's own web frontend (comfyui-frontend-package 1.58.1) boots against `latentgraph serve`
in headless Chromium, loads the txt2img workflow, queues it, and the output image appears.
A screenshot is kept in test-artifacts/frontend.png.

Needs Debian's chromium (/usr/bin/chromium), the PyPI playwright package and the frontend
package (`pip install -e '.[frontend]' playwright`); .ci/run installs them and runs this file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from browser_server import CHROMIUM, FLAGS, serving

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture
def server(tmp_path):
    pytest.importorskip("comfyui_frontend_package", reason="pip install 'latentgraph[frontend]'")
    with serving(tmp_path) as url:
        yield url, tmp_path


def test_the_comfyui_frontend_runs_a_workflow(server):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    url, home = server
    workflow = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
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
