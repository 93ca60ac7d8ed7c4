"""Every panel of ComfyUI's frontend (comfyui-frontend-package 1.58.1) against `latentgraph
serve`, in headless Chromium: the templates dialog (a template loaded and run), the model
library, node docs, the logs terminal, per-node progress on the canvas and TAESD step previews.
Screenshots go to test-artifacts/ (two of them are in the README).

Needs Debian's chromium (/usr/bin/chromium), playwright and the frontend extra (`pip install -e
'.[frontend]' playwright`: the frontend, comfyui-workflow-templates, comfyui-embedded-docs);
.ci/run installs them and runs the `browser` mark."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from browser_server import CHROMIUM, FLAGS, serving

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
DEMO = ROOT / "latentgraph" / "data" / "models" / "checkpoints" / "latentgraph-shapes.safetensors"
TEMPLATE_TITLE = "SDXL1.0: Text to Image (Simple)"  # 0.11.97 has no SD1.5 text-to-image template
TEMPLATE_CKPT = "sd_xl_base_1.0.safetensors"  # the name its CheckpointLoaderSimple references
USER_MODEL = "user-folder-model.safetensors"
BOOTED = "() => window.app && window.app.graph && window.app.api && window.app.api.clientId"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for module in ("comfyui_frontend_package", "comfyui_workflow_templates_core", "comfyui_embedded_docs"):
        pytest.importorskip(module, reason="pip install 'latentgraph[frontend]'")
    pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    home = tmp_path_factory.mktemp("panels")
    checkpoints = home / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # the template's checkpoint name, as a tiny random SDXL checkpoint in the published layout
    subprocess.run([sys.executable, "-m", "latentgraph", "make-checkpoint", "--family", "sdxl", "--size", "tiny",
                    str(checkpoints / TEMPLATE_CKPT)], check=True, capture_output=True)
    shutil.copyfile(DEMO, checkpoints / USER_MODEL)
    with serving(home) as url:
        yield url, home


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    url, _ = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function(BOOTED, timeout=120_000)
            yield page
        finally:
            browser.close()


def load_demo_workflow(page, steps: int = 20) -> None:
    """The README's txt2img workflow (the demo checkpoint) loaded into the canvas."""
    workflow = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())
    workflow["sampler"]["inputs"]["steps"] = steps
    page.evaluate("(wf) => window.app.loadApiJson(wf, 'txt2img.json')", workflow)
    page.wait_for_function("() => window.app.graph.nodes.some(n => n.type === 'KSampler')", timeout=30_000)


def widget(page, node_type: str, name: str, value) -> None:
    page.evaluate("""([type, name, value]) => {
        const node = window.app.graph.nodes.find(n => n.type === type);
        const w = node.widgets.find(w => w.name === name);
        w.value = value; w.callback?.(value);
    }""", [node_type, name, value])


def test_a_template_loads_from_the_dialog_and_runs(server, page):
    """The dialog offers the SDXL text-to-image template; clicking it loads its graph, which
    runs with a tiny SDXL checkpoint under the name the template references. The image size
    and step count are lowered before queuing (1024 px and 25 steps take 8 minutes on 2 CPU
    cores even with a tiny UNet: its attention runs over 16,384 latent positions)."""
    _, home = server
    with page.expect_response(lambda r: r.url.endswith("/templates/index.json")) as index:
        page.get_by_role("button", name="Templates").click()
    offered = {t["name"] for c in index.value.json() for t in c["templates"]}
    assert "image_sdxl_simple" in offered and not any(n.startswith("api_") for n in offered)
    card = page.get_by_text(TEMPLATE_TITLE, exact=True).first
    card.wait_for(timeout=30_000)
    page.wait_for_timeout(1500)  # thumbnails
    page.screenshot(path=str(ARTIFACTS / "templates.png"))
    card.click()
    page.wait_for_function("""(ckpt) => window.app.graph.nodes.some(n => n.type === 'CheckpointLoaderSimple'
                              && n.widgets[0].value === ckpt)""", arg=TEMPLATE_CKPT, timeout=30_000)
    widget(page, "EmptyLatentImage", "width", 256)
    widget(page, "EmptyLatentImage", "height", 256)
    widget(page, "KSampler", "steps", 4)
    with page.expect_response(lambda r: "/view?" in r.url and "sdxl_simple_00001_.png" in r.url,
                              timeout=300_000) as shown:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    body = shown.value.body()
    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    assert (home / "output" / "sdxl_simple_00001_.png").read_bytes() == body
    from PIL import Image

    assert Image.open(io.BytesIO(body)).size == (256, 256)


def test_the_model_library_lists_a_file_of_the_user_folder(page):
    with page.expect_response(lambda r: r.url.endswith("/experiment/models/checkpoints")) as listing:
        page.get_by_role("button", name="Model Library (m)").click()
        page.get_by_text("checkpoints", exact=True).first.click()
    names = [m["name"] for m in listing.value.json()]
    assert USER_MODEL in names and TEMPLATE_CKPT in names
    page.get_by_text(USER_MODEL.rsplit(".", 1)[0], exact=True).wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "model-library.png"))


def test_node_docs_open_for_ksampler(page):
    load_demo_workflow(page)
    page.evaluate("() => window.app.canvas.selectNode(window.app.graph.nodes.find(n => n.type === 'KSampler'))")
    with page.expect_response(lambda r: r.url.endswith("/docs/KSampler/en.md")) as doc:
        page.get_by_role("button", name="Toggle properties panel").click()
        page.locator("[role=tab]", has_text="Info").first.click()
    assert doc.value.status == 200
    page.get_by_text("The KSampler works like this", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "node-docs.png"))


def test_the_logs_panel_shows_a_line_written_during_a_run(page):
    load_demo_workflow(page)
    page.get_by_role("button", name="Toggle Bottom Panel").click()
    page.locator("[role=tab][aria-selected=true]", has_text="LOGS").first.wait_for(timeout=30_000)  # its only tab
    page.locator(".xterm").first.wait_for(timeout=30_000)
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    terminal = page.locator(".xterm-rows, .xterm-accessibility").first
    deadline = time.monotonic() + 120
    while "Prompt executed in" not in terminal.inner_text():
        assert time.monotonic() < deadline, terminal.inner_text()
        page.wait_for_timeout(250)
    assert "got prompt" in terminal.inner_text()
    page.screenshot(path=str(ARTIFACTS / "logs.png"))


def test_a_running_ksampler_shows_progress_and_taesd_previews_arrive(page):
    """The canvas node's progress (what the frontend draws as the bar, set from progress_state)
    goes through values between 0 and 1 while the KSampler runs; the preview frames of the demo
    model are decoded by the package's TAESD decoder: 64x64 pictures of a 64 px image whose
    latent is 8x8 (the latent-to-RGB projection would give 8x8)."""
    frames: list[bytes] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f) if isinstance(f, bytes) else None))
    page.reload(wait_until="domcontentloaded")
    page.wait_for_function(BOOTED, timeout=120_000)
    load_demo_workflow(page, steps=60)
    page.get_by_role("button", name="Fit View (.)").click()  # the whole graph in sight for the screenshot
    page.evaluate("""() => {
        window.__progress = [];
        const node = window.app.graph.nodes.find(n => n.type === 'KSampler');
        window.__timer = setInterval(() => { if (node.progress !== undefined) window.__progress.push(node.progress); }, 20);
    }""")
    shot = None
    page.evaluate("() => window.app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 120
    while True:
        seen = page.evaluate("() => window.__progress")
        if shot is None and any(0.2 < v < 0.9 for v in seen):
            shot = page.screenshot(path=str(ARTIFACTS / "progress.png"))
        if seen and page.evaluate("() => window.app.graph.nodes.find(n => n.type === 'KSampler').progress") is None:
            break  # running no more
        assert time.monotonic() < deadline, seen[-5:]
        page.wait_for_timeout(50)
    values = page.evaluate("() => { clearInterval(window.__timer); return window.__progress; }")
    inside = sorted({round(v, 3) for v in values if 0 < v < 1})
    assert len(inside) >= 3, values  # the bar moved through several steps
    assert values == sorted(values)
    previews = [f for f in frames if len(f) > 8 and struct.unpack(">I", f[:4])[0] in (1, 4)]
    assert previews, "no preview frame arrived"
    from PIL import Image

    kind = struct.unpack(">I", previews[-1][:4])[0]
    if kind == 4:  # with metadata: a JSON header naming the node, then the image
        size = struct.unpack(">I", previews[-1][4:8])[0]
        meta = json.loads(previews[-1][8:8 + size])
        assert meta["image_type"] == "image/jpeg" and meta["node_id"] == "sampler"
        jpeg = previews[-1][8 + size:]
    else:
        jpeg = previews[-1][8:]
    assert Image.open(io.BytesIO(jpeg)).size == (64, 64)


def test_the_queue_and_history_panels(server, page):
    """The assets sidebar shows a finished job's picture; "Open as workflow in new tab" loads
    the graph that made it (from /api/jobs/{id}); Delete removes the job from the history;
    the queue's cancel button stops a running prompt, which the jobs list then calls cancelled."""
    _, home = server
    load_demo_workflow(page)
    widget(page, "KSampler", "seed", 7)  # a picture no other test of this server made (not a cached run)
    with page.expect_response(lambda r: "/view?" in r.url and r.status == 200, timeout=120_000) as shown:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    name = shown.value.url.split("filename=")[1].split("&")[0]
    page.get_by_role("button", name="Assets (a)").click()
    thumb = page.get_by_alt_text(name).first
    thumb.wait_for(timeout=30_000)
    page.wait_for_function("(img) => img.complete && img.naturalWidth === 64", arg=thumb.element_handle())
    page.screenshot(path=str(ARTIFACTS / "assets.png"))
    thumb.click(button="right")
    with page.expect_response(lambda r: "/api/jobs/" in r.url and r.status == 200) as detail:
        page.get_by_text("Open as workflow in new tab").first.click()
    job_id = detail.value.json()["id"]
    page.wait_for_function("""() => window.app.graph.nodes.some(n => n.type === 'KSampler' && n.widgets_values[0] === 7)
                              && window.app.graph.nodes.some(n => n.type === 'SaveImage')""", timeout=30_000)
    page.get_by_alt_text(name).first.click(button="right")
    page.get_by_text("Delete", exact=True).first.click()
    with page.expect_request(lambda r: r.url.endswith("/api/history") and r.method == "POST") as deleting:
        page.locator("button", has_text="Delete").last.click()
    assert json.loads(deleting.value.post_data) == {"delete": [job_id]}
    page.wait_for_function("(id) => fetch('/api/history/' + id).then(r => r.json()).then(h => !(id in h))", arg=job_id)

    saved = sorted((home / "output").glob("*.png"))
    load_demo_workflow(page, steps=1000)
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as queued:
        page.evaluate("() => window.app.queuePrompt(0, 1)")
    running = queued.value.json()["prompt_id"]
    page.wait_for_function("() => (window.app.graph.nodes.find(n => n.type === 'KSampler').progress || 0) > 0",
                           timeout=120_000)
    page.get_by_role("button", name="Cancel current run").click()
    page.wait_for_function("""(id) => fetch('/api/jobs?status=cancelled').then(r => r.json())
                              .then(j => j.jobs.some(job => job.id === id))""", arg=running, timeout=60_000)
    assert sorted((home / "output").glob("*.png")) == saved  # the cancelled run saved nothing
