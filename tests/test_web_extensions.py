"""Packs' web extensions: WEB_DIRECTORY (or pyproject's [tool.comfy] web) found as ComfyUI finds
it, listed by /extensions, its files served under /extensions/<pack>/, nothing outside it; and,
in Chromium, ComfyUI's frontend running a pack's JavaScript that adds a widget to its node.

The pack is tests/fixtures/packs/web_widget_pack, copied into each test's own custom-nodes folder
(so that other packs in the fixtures folder never load here)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from latentgraph.cli import main
from latentgraph.graph import Environment
from latentgraph.nodes import create_registry
from latentgraph.plugins import load_plugins
from latentgraph.server import extensions

from browser_server import CHROMIUM, FLAGS, serving

ROOT = Path(__file__).resolve().parents[1]
PACK = ROOT / "tests" / "fixtures" / "packs" / "web_widget_pack"
JS = "application/javascript; charset=utf-8"


def nodes_folder(tmp_path: Path, *extra: tuple[str, str]) -> Path:
    """A custom-nodes folder holding the fixture pack and ``extra`` (relative path, text) files."""
    folder = tmp_path / "custom_nodes"
    shutil.copytree(PACK, folder / "web_widget_pack", ignore=shutil.ignore_patterns("__pycache__"))
    for rel, text in extra:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    return folder


def loaded(folder: Path):
    registry = create_registry()
    infos = {p.name: p for p in load_plugins(registry, [folder], entry_points=False)}
    return registry, infos


def frontend_root(tmp_path: Path) -> Path:
    web_root = tmp_path / "web"
    (web_root / "extensions" / "core").mkdir(parents=True)
    (web_root / "index.html").write_text("<html>front</html>")
    (web_root / "extensions" / "core" / "a.js").write_text("export const core = 1;\n")
    return web_root


def serve(registry, tmp_path: Path, scenario, frontend="none"):
    """Run ``scenario(client, port)`` against the app over ``registry``."""
    from aiohttp.test_utils import TestClient, TestServer

    from latentgraph.server import create_app

    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", input_dir=tmp_path / "in",
                      models_dir=tmp_path / "models", device="cpu")

    async def go():
        app = create_app(registry, env, user_dir=tmp_path / "user", frontend=frontend)
        async with TestClient(TestServer(app)) as client:
            await scenario(client, client.port)

    asyncio.run(go())


async def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written (no client-side normalisation of dots or escapes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_the_packs_web_folder_is_listed_and_served(tmp_path):
    folder = nodes_folder(tmp_path)
    (folder / "web_widget_pack" / "js" / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "web_widget_pack" / "js" / "strings.json").write_text('{"a": 1}')
    (folder / "web_widget_pack" / "js" / ".hidden.js").write_text("hidden")
    registry, infos = loaded(folder)
    info = infos["web_widget_pack"]
    assert info.status == "loaded" and info.kind == "comfyui" and info.nodes == ["WebWidgetText"]
    assert info.web_dir == str((folder / "web_widget_pack" / "js").resolve()) and info.notes == []
    assert info.to_json()["web_dir"] == info.web_dir
    js = folder / "web_widget_pack" / "js"

    async def scenario(client, port):
        for prefix in ("", "/api"):
            listed = await (await client.get(prefix + "/extensions")).json()
            assert listed == ["/extensions/core/a.js", "/extensions/web_widget_pack/lib/util.js",
                              "/extensions/web_widget_pack/widget.js"]
            for rel, kind in [("widget.js", JS), ("lib/util.js", JS), ("style.css", "text/css; charset=utf-8"),
                              ("icon.png", "image/png"), ("strings.json", "application/json; charset=utf-8"),
                              (".hidden.js", JS)]:
                r = await client.get(f"{prefix}/extensions/web_widget_pack/{rel}")
                assert r.status == 200, rel
                assert await r.read() == (js / rel).read_bytes()
                assert r.headers["Content-Type"] == kind
        r = await client.head("/extensions/web_widget_pack/widget.js")
        assert r.status == 200 and r.headers["Content-Length"] == str((js / "widget.js").stat().st_size)
        assert r.headers["Content-Type"] == JS and await r.read() == b""
        # the frontend's own extension scripts are still served
        r = await client.get("/extensions/core/a.js")
        assert r.status == 200 and await r.read() == b"export const core = 1;\n"

    serve(registry, tmp_path, scenario, frontend=frontend_root(tmp_path))


def test_paths_that_leave_the_web_folder_are_refused(tmp_path):
    folder = nodes_folder(tmp_path)
    js = folder / "web_widget_pack" / "js"
    os.symlink("../__init__.py", js / "leak.js")  # a symlink out of the folder
    os.symlink("..", js / "up")  # a symlinked folder out of it
    os.symlink("widget.js", js / "alias.js")  # a symlink that stays inside is fine
    registry, infos = loaded(folder)

    async def scenario(client, port):
        listed = await (await client.get("/extensions")).json()
        assert listed == ["/extensions/web_widget_pack/alias.js", "/extensions/web_widget_pack/lib/util.js",
                          "/extensions/web_widget_pack/widget.js"]
        forbidden = {  # path: (the path shown, the segment refused)
            "/extensions/web_widget_pack/%2e%2e/__init__.py": ("../__init__.py", ".."),
            "/extensions/web_widget_pack/%2E%2E/__init__.py": ("../__init__.py", ".."),
            "/extensions/web_widget_pack/..%2f__init__.py": ("../__init__.py", "../__init__.py"),
            "/extensions/web_widget_pack/..%5c__init__.py": ("..\\__init__.py", "..\\__init__.py"),
            "/extensions/web_widget_pack/lib/%2e%2e/%2e%2e/__init__.py": ("lib/../../__init__.py", ".."),
            "/extensions/web_widget_pack/%2fetc%2fpasswd": ("/etc/passwd", "/etc/passwd"),
            "/extensions/web_widget_pack//etc/passwd": ("/etc/passwd", ""),
            "/extensions/web_widget_pack/./widget.js": ("./widget.js", "."),
            "/extensions/web_widget_pack/C:%5cwindows": ("C:\\windows", "C:\\windows"),
            "/api/extensions/web_widget_pack/%2e%2e/%2e%2e/web_widget_pack/__init__.py":
                ("../../web_widget_pack/__init__.py", ".."),
        }
        for path, (shown, segment) in forbidden.items():
            status, body = await raw_get(port, path)
            assert (status, body.decode()) == (403, f"forbidden: {shown!r} is not a path inside the web folder of "
                                                    f"'web_widget_pack' (segment {segment!r})"), path
        status, body = await raw_get(port, "/extensions/%2e%2e/web_widget_pack/__init__.py")
        assert (status, body) == (403, b"forbidden: '../web_widget_pack/__init__.py' does not start with a pack "
                                       b"name (segment '..')")
        for path in ("/extensions/web_widget_pack/leak.js", "/extensions/web_widget_pack/up/__init__.py"):
            status, body = await raw_get(port, path)
            assert (status, body) == (403, f"forbidden: '{path.split('pack/')[1]}' leaves the web folder of "
                                           f"'web_widget_pack'".encode())
        status, body = await raw_get(port, "/extensions/web_widget_pack/../web_widget_pack/../../__init__.py")
        assert (status, body) == (403, b"forbidden: '../web_widget_pack/../../__init__.py' is not a path inside "
                                       b"the web folder of 'web_widget_pack' (segment '..')")
        status, body = await raw_get(port, "/extensions/web_widget_pack/alias.js")
        assert status == 200 and body == (js / "widget.js").read_bytes()
        r = await client.get("/extensions/web_widget_pack/nope.js")
        assert (r.status, await r.text()) == (404, "no file 'nope.js' in the web folder of 'web_widget_pack'")
        r = await client.get("/extensions/web_widget_pack/lib")
        assert (r.status, await r.text()) == (404, "no file 'lib' in the web folder of 'web_widget_pack'")
        r = await client.get("/extensions/unknown_pack/widget.js")
        assert (r.status, await r.text()) == (404, "no web extension named 'unknown_pack': no loaded pack serves "
                                                   "one (served: web_widget_pack)")
        r = await client.get("/extensions/web_widget_pack/" + "a" * 2100 + ".js")
        assert (r.status, await r.text()) == (400, "the path is longer than 2048 bytes (MAX_URL_PATH_BYTES)")

    serve(registry, tmp_path, scenario)


BAD_PACK = ("class N:\n    INPUT_TYPES = classmethod(lambda c: {{'required': {{}}}})\n    RETURN_TYPES = ()\n"
            "    FUNCTION = 'f'\n    OUTPUT_NODE = True\n    def f(self):\n        return ()\n\n"
            "NODE_CLASS_MAPPINGS = {{'{name}': N}}\nWEB_DIRECTORY = {web}\n")  # web: a Python literal


def test_web_directories_that_cannot_be_served_are_notes(tmp_path):
    folder = nodes_folder(
        tmp_path,
        ("missing_web/__init__.py", BAD_PACK.format(name="MissingWeb", web="'./missing'")),
        ("outside_web/__init__.py", BAD_PACK.format(name="OutsideWeb", web="'../web_widget_pack/js'")),
        ("number_web/__init__.py", BAD_PACK.format(name="NumberWeb", web="5")),
        ("toml_web/__init__.py", BAD_PACK.format(name="TomlWeb", web="None")),
        ("toml_web/pyproject.toml", '[project]\nname = "toml-web"\n[tool.comfy]\nweb = "web"\n'),
        ("toml_web/web/t.js", "export {};\n"),
        ("failed_web/__init__.py", "WEB_DIRECTORY = './js'\nraise RuntimeError('broken pack')\n"),
        ("failed_web/js/f.js", "export {};\n"),
        ("badnode_web/__init__.py", "class N:\n    pass\n\nNODE_CLASS_MAPPINGS = {'BadNodeWeb': N}\n"
                                    "WEB_DIRECTORY = 'js'\n"),
        ("badnode_web/js/b.js", "export {};\n"))
    registry, infos = loaded(folder)
    assert infos["missing_web"].status == "loaded" and infos["missing_web"].web_dir is None
    assert infos["missing_web"].notes == [
        f"its web extension is not served: WEB_DIRECTORY './missing' is not a folder "
        f"({folder / 'missing_web' / 'missing'})"]
    assert infos["outside_web"].web_dir is None and infos["outside_web"].notes == [
        f"its web extension is not served: WEB_DIRECTORY '../web_widget_pack/js' leaves the pack's folder "
        f"({folder / 'outside_web'})"]
    assert infos["number_web"].web_dir is None and infos["number_web"].notes == [
        "its web extension is not served: WEB_DIRECTORY must be a folder path (a string), not int"]
    assert infos["toml_web"].web_dir == str((folder / "toml_web" / "web").resolve()) and infos["toml_web"].notes == []
    assert infos["failed_web"].status == "failed" and infos["failed_web"].web_dir is None
    assert infos["badnode_web"].status == "failed" and infos["badnode_web"].web_dir is None

    async def scenario(client, port):
        listed = await (await client.get("/extensions")).json()
        assert listed == ["/extensions/toml_web/t.js", "/extensions/web_widget_pack/lib/util.js",
                          "/extensions/web_widget_pack/widget.js"]
        for pack, rel in [("failed_web", "f.js"), ("badnode_web", "b.js"), ("missing_web", "x.js")]:
            r = await client.get(f"/extensions/{pack}/{rel}")
            assert r.status == 404 and (await r.text()).startswith(f"no web extension named '{pack}'")

    serve(registry, tmp_path, scenario)


def test_two_packs_quoted_names_and_a_pack_named_like_the_frontends_folder(tmp_path):
    folder = nodes_folder(
        tmp_path,
        ("other pack/__init__.py", BAD_PACK.format(name="OtherPack", web="'web'")),
        ("other pack/web/a b.js", "export const spaced = 1;\n"),
        ("other pack/web/100%.js", "export const percent = 1;\n"),
        ("core/__init__.py", BAD_PACK.format(name="CorePack", web="'js'")),
        ("core/js/a.js", "export const pack = 'core';\n"))
    web_root = frontend_root(tmp_path)
    (web_root / "extensions" / "core" / "b.js").write_text("export const b = 1;\n")
    (web_root / "extensions" / "mine.js").write_text("export const mine = 1;\n")
    registry, infos = loaded(folder)
    assert [p.name for p in infos.values()] == ["core", "other pack", "web_widget_pack"]

    async def scenario(client, port):
        listed = await (await client.get("/extensions")).json()
        # the pack named core wins over the frontend's extensions/core/ (as in ComfyUI): the
        # frontend's scripts there are not listed, its own top-level ones are
        assert listed == ["/extensions/mine.js", "/extensions/core/a.js", "/extensions/other%20pack/100%25.js",
                          "/extensions/other%20pack/a%20b.js", "/extensions/web_widget_pack/lib/util.js",
                          "/extensions/web_widget_pack/widget.js"]
        for url, text in [("/extensions/other%20pack/a%20b.js", "export const spaced = 1;\n"),
                          ("/extensions/other%20pack/100%25.js", "export const percent = 1;\n"),
                          ("/extensions/core/a.js", "export const pack = 'core';\n"),
                          ("/extensions/mine.js", "export const mine = 1;\n")]:
            status, body = await raw_get(port, url)
            assert (status, body.decode()) == (200, text), url
        r = await client.get("/extensions/core/b.js")
        assert (r.status, await r.text()) == (404, "no file 'b.js' in the web folder of 'core'")

    serve(registry, tmp_path, scenario, frontend=web_root)


def test_a_huge_web_folder_is_listed_within_the_budget(tmp_path, monkeypatch, caplog):
    folder = nodes_folder(tmp_path, *[(f"web_widget_pack/js/many/f{i:02d}.js", "") for i in range(30)])
    registry, infos = loaded(folder)
    root = Path(infos["web_widget_pack"].web_dir)
    assert extensions.js_files(root) == (["lib/util.js"] + [f"many/f{i:02d}.js" for i in range(30)] + ["widget.js"],
                                         False)
    monkeypatch.setattr(extensions, "MAX_WALKED_ENTRIES", 10)
    # the walk is sorted and depth first: lib, many, style.css, widget.js (4 entries), then many/
    # (the last folder seen is entered first): f00..f05, and the 11th entry stops it
    assert extensions.js_files(root) == ([f"many/f{i:02d}.js" for i in range(6)] + ["widget.js"], True)
    monkeypatch.setattr(extensions, "MAX_WALKED_ENTRIES", 20_000)
    monkeypatch.setattr(extensions, "MAX_LISTED_FILES", 3)
    assert extensions.js_files(root) == (["many/f00.js", "many/f01.js", "widget.js"], True)

    async def scenario(client, port):
        with caplog.at_level(logging.WARNING, logger="latentgraph.server"):
            for _ in range(2):  # warned once
                listed = await (await client.get("/extensions")).json()
                assert listed == ["/extensions/web_widget_pack/many/f00.js", "/extensions/web_widget_pack/many/f01.js",
                                  "/extensions/web_widget_pack/widget.js"]
        warnings = [r.getMessage() for r in caplog.records if "too big to list" in r.getMessage()]
        assert warnings == [f"pack web_widget_pack: its web folder {root} is too big to list whole "
                            f"(MAX_WALKED_ENTRIES=20000, MAX_LISTED_FILES=3); /extensions lists 3 of its scripts"]

    serve(registry, tmp_path, scenario)


def test_an_entry_point_packs_web_directory(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "ep_web_pack" / "web").mkdir(parents=True)
    (site / "ep_web_pack" / "web" / "ep.js").write_text("export const ep = 1;\n")
    (site / "ep_web_pack" / "__init__.py").write_text(
        "from typing import Annotated\nfrom latentgraph.graph import String, node\n\nWEB_DIRECTORY = 'web'\n\n"
        "@node(outputs=['STRING'])\ndef EpEcho(text: Annotated[str, String('x')]) -> str:\n    return text\n\n"
        "def register(registry):\n    import sys\n    registry.register_module(sys.modules[__name__])\n")
    monkeypatch.syspath_prepend(str(site))
    real = importlib.metadata.entry_points
    ep = importlib.metadata.EntryPoint("ep_web", "ep_web_pack:register", "latentgraph.nodes")
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [ep] if kw.get("group") == "latentgraph.nodes" else real(**kw))
    registry = create_registry()
    (info,) = load_plugins(registry, [], entry_points=True)
    assert (info.name, info.status, info.nodes) == ("ep_web", "loaded", ["EpEcho"])
    assert info.web_dir == str((site / "ep_web_pack" / "web").resolve()) and info.notes == []

    async def scenario(client, port):
        assert await (await client.get("/api/extensions")).json() == ["/extensions/ep_web/ep.js"]
        r = await client.get("/extensions/ep_web/ep.js")
        assert await r.text() == "export const ep = 1;\n" and r.headers["Content-Type"] == JS

    serve(registry, tmp_path, scenario)


def test_the_cli_shows_each_packs_web_folder(tmp_path, capsys):
    folder = nodes_folder(tmp_path, ("missing_web/__init__.py", BAD_PACK.format(name="MissingWeb", web="'gone'")))
    assert main(["nodes", "--plugins", "--custom-nodes", str(folder)]) == 0
    out = capsys.readouterr().out
    js = (folder / "web_widget_pack" / "js").resolve()
    assert f"  source: {folder / 'web_widget_pack'}\n  web: /extensions/web_widget_pack/ serves {js}\n" in out
    assert (f"  note: its web extension is not served: WEB_DIRECTORY 'gone' is not a folder "
            f"({folder / 'missing_web' / 'gone'})\n") in out
    assert out.count("  web: ") == 1
    assert main(["nodes", "--plugins", "--json", "--custom-nodes", str(folder)]) == 0
    listed = {p["name"]: p["web_dir"] for p in json.loads(capsys.readouterr().out)}
    assert listed == {"missing_web": None, "web_widget_pack": str(js)}


@pytest.fixture
def served_with_pack(tmp_path):
    """`latentgraph serve` with ComfyUI's frontend and the fixture pack, on a free loopback port."""
    pytest.importorskip("comfyui_frontend_package", reason="pip install 'latentgraph[frontend]'")
    folder = nodes_folder(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "LATENTGRAPH_CONFIG"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # no user config file adds packs
    with serving(tmp_path, "--custom-nodes", str(folder), env=env) as url:
        yield url


@pytest.mark.browser
def test_the_frontend_runs_the_packs_javascript(served_with_pack):
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    url = served_with_pack
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            console: list[str] = []
            fetched: dict[str, int] = {}
            page.on("console", lambda msg: console.append(msg.text))
            page.on("response", lambda r: fetched.__setitem__(r.url[len(url):], r.status)
                    if "/extensions/web_widget_pack/" in r.url else None)
            page.goto(url + "/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.lgWebWidgetLoaded === true",
                                   timeout=120_000)
            widgets = page.evaluate("""() => {
                const node = window.LiteGraph.createNode("WebWidgetText");
                window.app.graph.add(node);
                const added = window.app.graph.getNodeById(node.id);
                return added.widgets.map(w => [w.name, w.value]);
            }""")
            assert widgets == [["text", "hello"], ["lg_web_widget", "from WebWidgetText"]]
            assert "lg_web_widget: extension registered" in console
            assert fetched == {"/extensions/web_widget_pack/widget.js": 200,
                               "/extensions/web_widget_pack/lib/util.js": 200}
        finally:
            browser.close()
