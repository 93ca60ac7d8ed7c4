"""The frontend's templates dialog: core templates filtered to those whose nodes latentgraph has
(per locale, empty categories dropped), their files served at the root only and nothing else,
the example workflows of custom-node packs, and ``latentgraph templates``.

Every test but the last builds a small templates layout of its own, so none needs the
comfyui-workflow-templates packages; the last one checks the installed packages when present."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import types
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from latentgraph.cli import main
from latentgraph.graph import Environment
from latentgraph.nodes import create_registry
from latentgraph.plugins import PluginInfo
from latentgraph.server import create_app, templates
from latentgraph.server.templates import (PackTemplates, TemplateRoutes, folder_files, package_files,
                                          survey)

THUMB = b"RIFF\x10\x00\x00\x00WEBPVP8 fake"
SUBGRAPH = "a3c0dab6-b250-4585-a0f9-8fb8b074fb2f"


def ui(*kinds: str, subgraphs: list | None = None) -> dict:
    """A UI workflow with one node per kind (and subgraph definitions)."""
    doc = {"nodes": [{"id": i + 1, "type": k, "widgets_values": []} for i, k in enumerate(kinds)], "links": []}
    if subgraphs is not None:
        doc["definitions"] = {"subgraphs": subgraphs}
    return doc


WORKFLOWS = {
    "sd_basic": ui("CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage", "Note",
                   "MarkdownNote", "PrimitiveNode", "Reroute"),
    "needs_video": ui("CheckpointLoaderSimple", "KSampler", "ZzSaveVideo", "NoSuchNode"),
    "only_video": ui("ZzLoadVideo"),
    "with_subgraph": ui(SUBGRAPH, "SaveImage",
                        subgraphs=[{"id": SUBGRAPH, "nodes": [{"id": 1, "type": "KSampler"},
                                                              {"id": 2, "type": "VAEDecode"}]}]),
    "bad_subgraph": ui(SUBGRAPH, subgraphs=[{"id": SUBGRAPH, "nodes": [{"id": 1, "type": "InnerMissing"}]}]),
}


def category(title: str, names: list[str], suffix: str = "") -> dict:
    return {"moduleName": "default", "category": "Foundation", "title": title, "type": "image",
            "templates": [{"name": n, "title": n + suffix, "mediaType": "image", "mediaSubtype": "webp"}
                          for n in names]}


def layout(root: Path) -> Path:
    """A templates folder as ComfyUI's single package laid it out; a secret file next to it."""
    root.mkdir()
    for name, doc in WORKFLOWS.items():
        (root / f"{name}.json").write_text(json.dumps(doc))
        (root / f"{name}-1.webp").write_bytes(THUMB)
    cats = [("Image", ["sd_basic", "needs_video", "with_subgraph", "bad_subgraph"]), ("Video", ["only_video"])]
    (root / "index.json").write_text(json.dumps([category(t, n) for t, n in cats]))
    (root / "index.fr.json").write_text(json.dumps([category(t + " (fr)", n, " (fr)") for t, n in cats]))
    (root / "index.schema.json").write_text(json.dumps({"type": "array"}))
    (root / "index_logo.json").write_text(json.dumps({"Acme": "logo/acme.png"}))
    (root / "logo").mkdir()
    (root / "logo" / "acme.png").write_bytes(b"\x89PNG logo")
    (root.parent / "secret.json").write_text('{"secret": 1}')
    return root


KNOWN = {"CheckpointLoaderSimple", "CLIPTextEncode", "KSampler", "VAEDecode", "SaveImage"}


@pytest.fixture(scope="module")
def registry():
    return create_registry()


def serve(app: web.Application, scenario) -> None:
    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            await scenario(client)

    asyncio.run(asyncio.wait_for(go(), 120))


def bare_app(registry, files) -> web.Application:
    app = web.Application()
    TemplateRoutes(registry, find=lambda: files).install(app)
    return app


# -- which templates are offered --------------------------------------------------------------
def test_a_template_is_offered_only_when_every_node_is_there(tmp_path, registry):
    assert KNOWN <= set(registry)
    verdicts = {v.name: v for v in survey(folder_files(layout(tmp_path / "t")), registry.__contains__)}
    assert [n for n, v in verdicts.items() if v.offered] == ["sd_basic", "with_subgraph"]
    assert verdicts["sd_basic"].category == "Image"  # Note, MarkdownNote, PrimitiveNode, Reroute: the frontend's
    assert verdicts["with_subgraph"].offered  # its subgraph id is a node type of its own file
    assert verdicts["needs_video"].missing == ("NoSuchNode", "ZzSaveVideo")
    assert verdicts["needs_video"].reason == "missing nodes: NoSuchNode, ZzSaveVideo"
    assert verdicts["bad_subgraph"].missing == ("InnerMissing",)


def test_a_template_naming_a_model_family_latentgraph_cannot_load_is_hidden(tmp_path, registry):
    root = layout(tmp_path / "t")
    index = json.loads((root / "index.json").read_text())
    index[0]["templates"][0]["models"] = ["Anima"]  # sd_basic: every node is there, the model is not
    index[0]["templates"][2]["models"] = ["SDXL", "Stability"]  # with_subgraph: SDXL loads
    (root / "index.json").write_text(json.dumps(index))
    verdicts = {v.name: v for v in survey(folder_files(root), registry.__contains__)}
    assert not verdicts["sd_basic"].offered and verdicts["sd_basic"].missing == ()
    assert verdicts["sd_basic"].reason == "models latentgraph cannot load: Anima"
    assert verdicts["with_subgraph"].offered
    assert templates.foreign_models(["SD1.5", "SD3.5", "Qwen-Image"]) == ("Qwen-Image", "SD3.5")
    assert templates.foreign_models(None) == ()


def test_an_unreadable_or_oversized_template_is_hidden_with_the_reason(tmp_path, registry, monkeypatch):
    root = layout(tmp_path / "t")
    (root / "sd_basic.json").write_text("{not json")
    (root / "with_subgraph.json").unlink()
    monkeypatch.setattr(templates, "MAX_TEMPLATE_BYTES", 10_000)
    (root / "only_video.json").write_text(json.dumps({"nodes": [], "links": [], "pad": "x" * 20_000}))
    verdicts = {v.name: v for v in survey(folder_files(root), registry.__contains__)}
    assert not verdicts["sd_basic"].offered and "sd_basic.json" in verdicts["sd_basic"].problem
    assert "with_subgraph.json is not in" in verdicts["with_subgraph"].problem
    assert "MAX_TEMPLATE_BYTES" in verdicts["only_video"].problem


# -- the routes -------------------------------------------------------------------------------
def test_indexes_are_filtered_per_locale_and_files_served(tmp_path, registry, caplog):
    app = bare_app(KNOWN, folder_files(layout(tmp_path / "t")))

    async def scenario(client):
        with caplog.at_level(logging.INFO, logger="latentgraph.server"):
            r = await client.get("/templates/index.json")
            assert r.status == 200 and r.content_type == "application/json"
            index = await r.json()
        assert [c["title"] for c in index] == ["Image"]  # Video had nothing offered: dropped
        assert [t["name"] for t in index[0]["templates"]] == ["sd_basic", "with_subgraph"]
        assert index[0]["moduleName"] == "default" and index[0]["templates"][0]["mediaSubtype"] == "webp"
        fr = await (await client.get("/templates/index.fr.json")).json()
        assert [c["title"] for c in fr] == ["Image (fr)"]
        assert [t["title"] for t in fr[0]["templates"]] == ["sd_basic (fr)", "with_subgraph (fr)"]
        assert (await client.get("/templates/index.de.json")).status == 404  # the frontend falls back to English
        r = await client.get("/templates/index_logo.json")
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == {"Acme": "logo/acme.png"}
        assert await (await client.get("/templates/index.schema.json")).json() == {"type": "array"}
        r = await client.get("/templates/sd_basic-1.webp")
        assert r.status == 200 and await r.read() == THUMB and r.content_type == "image/webp"
        assert await (await client.get("/templates/logo/acme.png")).read() == b"\x89PNG logo"
        # a hidden template's workflow is still there (the frontend never asks for it)
        assert (await (await client.get("/templates/needs_video.json")).json())["nodes"][2]["type"] == "ZzSaveVideo"

    serve(app, scenario)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("templates: ")]
    assert lines == ["templates: 2 of 5 offered; 3 hidden (nodes latentgraph lacks); "
                     "`latentgraph templates --all` lists them"]


@pytest.mark.parametrize("path", ["/templates/..%2Fsecret.json", "/templates/%2E%2E%2Fsecret.json",
                                  "/templates/logo%2F..%2F..%2Fsecret.json", "/templates/..%5Csecret.json",
                                  "/templates/%2Fetc%2Fpasswd", "/templates/nothing.json",
                                  "/templates/sd_basic.json%00.webp"])
def test_no_path_leaves_the_templates(tmp_path, path):
    app = bare_app(set(), folder_files(layout(tmp_path / "t")))

    async def scenario(client):
        r = await client.get(path)
        assert r.status in (400, 403, 404) and b'"secret": 1' not in await r.read()

    serve(app, scenario)


def fake_core(root: Path, assets: dict[str, str]) -> types.ModuleType:
    """A stand-in for comfyui_workflow_templates_core: a manifest of ``assets`` (file -> template
    id), each found under ``root``."""
    module = types.ModuleType("comfyui_workflow_templates_core")
    entries = {}
    for filename, tid in assets.items():
        entries.setdefault(tid, []).append(types.SimpleNamespace(filename=filename))
    manifest = types.SimpleNamespace(templates={tid: types.SimpleNamespace(template_id=tid, assets=a)
                                                for tid, a in entries.items()})

    def get_asset_path(template_id: str, filename: str) -> str:
        if assets.get(filename) != template_id:
            raise KeyError(filename)
        if not (root / filename).is_file():
            raise FileNotFoundError(filename)
        return str(root / filename)

    module.load_manifest = lambda: manifest
    module.get_asset_path = get_asset_path
    return module


def test_with_the_split_packages_only_manifest_names_are_served(tmp_path, monkeypatch):
    root = layout(tmp_path / "t")
    (root / "unlisted.webp").write_bytes(b"not in the manifest")
    assets = {"index.json": "index", "sd_basic.json": "sd_basic", "sd_basic-1.webp": "sd_basic",
              "logo/acme.png": "index_logo", "only_video-1.webp": "only_video"}
    monkeypatch.setitem(sys.modules, "comfyui_workflow_templates_core", fake_core(root, assets))
    files = package_files()
    assert files is not None and files.path("sd_basic-1.webp") == root / "sd_basic-1.webp"
    assert files.path("unlisted.webp") is None and files.path("../secret.json") is None
    app = bare_app(KNOWN, files)

    async def scenario(client):
        index = await (await client.get("/templates/index.json")).json()
        assert [t["name"] for c in index for t in c["templates"]] == ["sd_basic"]  # the others' JSON is absent
        assert await (await client.get("/templates/logo/acme.png")).read() == b"\x89PNG logo"
        assert (await client.get("/templates/unlisted.webp")).status == 404
        assert (await client.get("/templates/index.fr.json")).status == 404

    serve(app, scenario)


def test_without_the_package_templates_are_404_and_said_once(tmp_path, caplog):
    app = bare_app(set(), None)

    async def scenario(client):
        with caplog.at_level(logging.WARNING, logger="latentgraph.server"):
            for _ in range(2):
                r = await client.get("/templates/index.json")
                assert r.status == 404 and "latentgraph[frontend]" in await r.text()

    serve(app, scenario)
    assert sum("comfyui-workflow-templates is not installed" in r.getMessage() for r in caplog.records) == 1


def pack(tmp_path: Path) -> Path:
    """A custom-nodes folder with a pack that ships example workflows in two folders."""
    folder = tmp_path / "custom_nodes" / "mypack"
    for rel, text in (("example_workflows/b.json", "{}"), ("example_workflows/a.json", '{"a": 1}'),
                      ("example_workflows/a.jpg", "JPG"), ("example_workflows/.hidden.json", "{}"),
                      ("example_workflows/notes.txt", "x"), ("workflows/c.json", "{}"),
                      ("workflows/a.json", '{"a": 2}'), ("__init__.py", "")):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    (tmp_path / "custom_nodes" / "plain").mkdir()
    return folder


def test_pack_example_workflows_are_listed_and_served(tmp_path):
    folder = pack(tmp_path)
    plugins = [PluginInfo("mypack", str(folder), kind="comfyui"),
               PluginInfo("plain", str(folder.parent / "plain"), kind="comfyui"),
               PluginInfo("broken", str(folder), kind="comfyui", status="failed"),
               PluginInfo("ep", "entry point ep = x:y", kind="latentgraph")]
    routes = PackTemplates(plugins)
    assert routes.listing() == {"mypack": ["a", "b", "c"]}
    app = web.Application()
    for method, path, handler in routes.routes():
        app.router.add_route(method, "/api" + path, handler)

    async def scenario(client):
        assert await (await client.get("/api/workflow_templates")).json() == {"mypack": ["a", "b", "c"]}
        assert await (await client.get("/api/workflow_templates/mypack/a.json")).json() == {"a": 1}
        assert await (await client.get("/api/workflow_templates/mypack/c.json")).json() == {}
        assert await (await client.get("/api/workflow_templates/mypack/a.jpg")).read() == b"JPG"
        for bad in ("mypack/..%2F__init__.py", "mypack/%2E%2E", "mypack/missing.json", "plain/a.json",
                    "broken/a.json", "mypack/..%5C__init__.py"):
            assert (await client.get(f"/api/workflow_templates/{bad}")).status in (403, 404), bad

    serve(app, scenario)


def test_create_app_serves_templates_at_the_root_before_the_frontend(tmp_path, monkeypatch):
    """/templates/* is ours even where the frontend's folder has a templates folder; it is not
    under /api; /workflow_templates is at both."""
    fake = folder_files(layout(tmp_path / "t"))
    monkeypatch.setattr(templates, "package_files", lambda: fake)
    web_root = tmp_path / "web"
    (web_root / "templates").mkdir(parents=True)
    (web_root / "index.html").write_text("<html>front</html>")
    (web_root / "templates" / "index.json").write_text('"shadow"')
    registry = create_registry()
    registry.plugins.append(PluginInfo("mypack", str(pack(tmp_path)), kind="comfyui"))
    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", input_dir=tmp_path / "in",
                      models_dir=tmp_path / "models", device="cpu")
    app = create_app(registry, env, services={}, user_dir=tmp_path / "user", frontend=web_root)

    async def scenario(client):
        index = await (await client.get("/templates/index.json")).json()
        assert isinstance(index, list) and "sd_basic" in [t["name"] for c in index for t in c["templates"]]
        assert (await client.get("/api/templates/index.json")).status == 404
        for prefix in ("", "/api"):
            assert await (await client.get(prefix + "/workflow_templates")).json() == {"mypack": ["a", "b", "c"]}
        assert await (await client.get("/")).text() == "<html>front</html>"

    serve(app, scenario)


# -- the command ------------------------------------------------------------------------------
def test_the_command_lists_offered_and_hidden_templates(tmp_path, monkeypatch, capsys):
    fake = folder_files(layout(tmp_path / "t"))
    monkeypatch.setattr(templates, "package_files", lambda: fake)
    assert main(["templates", "--no-plugins"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "sd_basic" and "[Image]" in out[0]
    assert "needs_video" not in "\n".join(out) and out[-1].startswith("2 of 5 templates offered; 3 hidden")
    assert main(["templates", "--no-plugins", "--all"]) == 0
    text = capsys.readouterr().out
    assert "missing nodes: InnerMissing" in text and "missing nodes: NoSuchNode, ZzSaveVideo" in text
    assert main(["templates", "--no-plugins", "--all", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["total"] == 5 and [t["name"] for t in doc["offered"]] == ["sd_basic", "with_subgraph"]
    hidden = {t["name"]: t for t in doc["hidden"]}
    assert hidden["bad_subgraph"]["missing"] == ["InnerMissing"] and doc["missing_nodes"]["ZzSaveVideo"] == 1


def test_the_command_without_the_package_exits_2(monkeypatch, capsys):
    monkeypatch.setattr(templates, "package_files", lambda: None)
    assert main(["templates", "--no-plugins"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'latentgraph[frontend]'" in err[0]


# -- the installed packages -------------------------------------------------------------------
def test_the_installed_templates(tmp_path, registry):
    """With comfyui-workflow-templates 0.11.97 installed: the SDXL text-to-image template (the
    package has no SD1.5 one) is offered and a partner-API one is hidden; the files the
    frontend asks for come back with the types it checks."""
    pytest.importorskip("comfyui_workflow_templates_core")
    files = package_files()
    assert files is not None
    app = bare_app(registry, files)

    async def scenario(client):
        index = await (await client.get("/templates/index.json")).json()
        names = {t["name"] for c in index for t in c["templates"]}
        assert "image_sdxl_simple" in names and "api_bfl_flux2_max_sofa_swap" not in names
        assert all(c["templates"] for c in index)
        ja = await (await client.get("/templates/index.ja.json")).json()
        assert {t["name"] for c in ja for t in c["templates"]} == names
        r = await client.get("/templates/index_logo.json")
        assert r.content_type == "application/json" and isinstance(await r.json(), dict)
        r = await client.get("/templates/image_sdxl_simple-1.webp")
        assert r.status == 200 and r.content_type == "image/webp" and (await r.read())[:4] == b"RIFF"
        wf = await (await client.get("/templates/image_sdxl_simple.json")).json()
        assert "CheckpointLoaderSimple" in {n["type"] for n in wf["nodes"]}
        assert (await client.get("/templates/logo/bfl.png")).status == 200
        assert (await client.get("/templates/..%2F__init__.py")).status == 404

    serve(app, scenario)
    hidden = templates.judge(files, "api_bfl_flux2_max_sofa_swap", "", "", registry.__contains__)
    assert hidden.missing and not hidden.offered
    verdicts = {v.name: v for v in survey(files, registry.__contains__)}
    assert not verdicts["image_anima_preview"].offered  # its nodes are all core; Anima is not a family we load
    assert verdicts["image_anima_preview"].families == ("Anima",)
