"""Make the `.api.json` of UI-format workflows in tests/fixtures/comfy_workflows: the API prompt that
ComfyUI's own web frontend makes of each, in headless Chromium driven by Playwright. Run from the
repository root against a running ComfyUI (the oracle of the README of that folder):

    .venv/bin/python tools/make_template_fixtures.py --server 127.0.0.1:8190 \
        --base /work/oracle/base NAME [NAME ...]

For each NAME it reads tests/fixtures/comfy_workflows/NAME.ui.json, runs the frontend's
`app.loadGraphData(workflow)` then `(await app.graphToPrompt()).output`, and writes NAME.api.json
(indent 2). So that every combo keeps its saved value, empty placeholder files with the model names
the workflows use are put into the server's model folders, and 8x8 PNGs with the image names into
its input folder; only files that did not exist are made, and they are removed afterwards.
Needs /usr/bin/chromium and playwright (pip install playwright). It imports nothing of ComfyUI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "comfy_workflows"
# the browser, its flags and the conversion script are the subgraph fixtures' (same folder)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_subgraph_fixtures import CHROMIUM, CHROMIUM_ARGS, CONVERT_JS  # noqa: E402

# loader class -> (widget index, model folder) for the names placeholders are made for
LOADERS = {"CheckpointLoaderSimple": (0, "checkpoints"), "unCLIPCheckpointLoader": (0, "checkpoints"),
           "VAELoader": (0, "vae"), "ControlNetLoader": (0, "controlnet"), "GLIGENLoader": (0, "gligen"),
           "CLIPVisionLoader": (0, "clip_vision"), "LoraLoader": (0, "loras"), "StyleModelLoader": (0, "style_models"),
           "UpscaleModelLoader": (0, "upscale_models")}


def placeholders(workflows: list[dict], base: Path) -> list[Path]:
    """The files to make under `base` so that the workflows' combo values exist there."""
    want = set()
    for wf in workflows:
        for n in wf["nodes"]:
            values = n.get("widgets_values") or []
            if n["type"] in LOADERS and values:
                index, folder = LOADERS[n["type"]]
                want.add(base / "models" / folder / values[index])
            elif n["type"] == "LoadImage" and values:
                want.add(base / "input" / values[0])
    return sorted(p for p in want if not p.exists())


def make_placeholders(paths: list[Path]) -> list[Path]:
    """Make them; returns everything made (folders too, deepest last) so it can be removed."""
    from PIL import Image

    made = []
    for path in paths:
        for parent in reversed(path.parents):
            if not parent.exists():
                parent.mkdir()
                made.append(parent)
        if path.suffix == ".png":
            Image.new("RGB", (8, 8), (128, 128, 128)).save(path)
        else:
            path.touch()
        made.append(path)
    return made


def convert(server: str, workflows: list[dict]) -> list[dict]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        messages = []
        page.on("console", lambda m: messages.append(f"{m.type}: {m.text}"))
        page.on("response", lambda r: r.status >= 400 and messages.append(f"error: HTTP {r.status} {r.url}"))
        page.on("requestfailed", lambda r: messages.append(f"error: failed {r.url}"))
        page.goto(f"http://{server}/", wait_until="domcontentloaded", timeout=120_000)
        page.wait_for_function("() => window.app && window.app.graph && window.app.api && window.app.api.clientId",
                               timeout=120_000)
        prompts = json.loads(page.evaluate(CONVERT_JS, workflows))
        browser.close()
    for m in messages:
        if m.startswith(("error", "warning")):
            print("console", m, file=sys.stderr)
    return prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="+")
    ap.add_argument("--server", default="127.0.0.1:8190")
    ap.add_argument("--base", type=Path, required=True, help="the server's --base-directory")
    args = ap.parse_args(argv)
    workflows = [json.loads((FIXTURES / f"{n}.ui.json").read_text()) for n in args.names]
    made = make_placeholders(placeholders(workflows, args.base))
    try:
        prompts = convert(args.server, workflows)
    finally:
        for path in reversed(made):
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:  # someone else put a file there meanwhile: theirs, leave it
                    pass
            else:
                path.unlink()
    for name, wf, prompt in zip(args.names, workflows, prompts):
        (FIXTURES / f"{name}.api.json").write_text(json.dumps(prompt, indent=2) + "\n")
        print(f"{name}: {len(wf['nodes'])} UI nodes -> {len(prompt)} API nodes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
