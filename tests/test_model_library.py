"""The model library routes (/experiment/models..., /view_metadata), the node help pages at
/docs, and the descriptions and tooltips /object_info gives ComfyUI's frontend."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import struct
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from safetensors.torch import save_file

from latentgraph.comfy_compat import TREE
from latentgraph.graph import Environment
from latentgraph.graph.registry import NodeRegistry
from latentgraph.server import create_app
from latentgraph.models import safetensors_header
from latentgraph.server import model_library
from latentgraph.server.model_library import FOLDER_KINDS, FOLDER_NAMES


@asynccontextmanager
async def served(tmp: Path, registry=None, **options):
    env = Environment(output_dir=tmp / "output", input_dir=tmp / "input", temp_dir=tmp / "temp",
                      models_dir=tmp / "models", device="cpu", model_dirs=options.pop("model_dirs", {}))
    options.setdefault("frontend", "none")
    app = create_app(registry if registry is not None else NodeRegistry(), env, services={},
                     user_dir=tmp / "user", **options)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def png(colour=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buf, format="PNG")
    return buf.getvalue()


def is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def test_folder_names_are_the_comfy_layers_table():
    """The names listed are the folder table of the ComfyUI layer (folder_paths) less configs
    and custom_nodes, with the same kinds behind each."""
    spec = importlib.util.spec_from_file_location("latentgraph_folder_paths_probe", TREE / "folder_paths.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert list(FOLDER_NAMES) == [n for n in module._TABLE if n not in ("configs", "custom_nodes")]
    assert FOLDER_KINDS == module._KINDS


def test_folders_and_listing(tmp_path):
    models = tmp_path / "models"
    extra = tmp_path / "elsewhere"
    ckpt = write(models / "checkpoints" / "a.safetensors", b"x" * 123)
    write(models / "checkpoints" / "sub" / "b.ckpt", b"y" * 7)
    write(models / "checkpoints" / ".hidden.safetensors", b"h")
    write(models / "checkpoints" / ".cache" / "c.safetensors", b"h")
    write(models / "checkpoints" / ".git" / "d.safetensors", b"h")
    write(models / "checkpoints" / "notes.txt", b"not a model")
    write(models / "t2i_adapter" / "adapter.pth", b"t")
    write(models / "unet" / "legacy.safetensors", b"u")
    write(extra / "e.safetensors", b"e")

    async def go():
        async with served(tmp_path, model_dirs={"loras": [extra], "ipadapter": [extra]}) as client:
            folders = await (await client.get("/api/experiment/models")).json()
            table = {f["name"]: f["folders"] for f in folders}
            assert "configs" not in table and "custom_nodes" not in table
            assert set(FOLDER_NAMES) <= set(table) and "ipadapter" in table
            assert table["checkpoints"][0] == str((models / "checkpoints").absolute())
            assert str((models / "t2i_adapter").absolute()) in table["controlnet"]
            assert table["loras"][:2] == [str((models / "loras").absolute()), str(extra.absolute())]

            files = await (await client.get("/experiment/models/checkpoints")).json()
            mine = {f["name"]: f for f in files if f["pathIndex"] == 0}
            assert set(mine) == {"a.safetensors", "sub/b.ckpt"}  # hidden files and folders, .git, .txt skipped
            a = mine["a.safetensors"]
            assert a["size"] == 123 and a["modified"] == pytest.approx(ckpt.stat().st_mtime)
            assert set(a) == {"name", "pathIndex", "modified", "created", "size"}
            # the package's demo checkpoint is in a later folder of the same name
            assert any(f["name"] == "latentgraph-shapes.safetensors" and f["pathIndex"] > 0 for f in files)

            controlnet = await (await client.get("/api/experiment/models/controlnet")).json()
            index = table["controlnet"].index(str((models / "t2i_adapter").absolute()))
            assert {"name": "adapter.pth", "pathIndex": index} in [{k: f[k] for k in ("name", "pathIndex")}
                                                                   for f in controlnet]
            for legacy in ("unet", "diffusion_models"):
                listed = await (await client.get(f"/api/experiment/models/{legacy}")).json()
                assert "legacy.safetensors" in [f["name"] for f in listed]
            assert [f["name"] for f in await (await client.get("/api/experiment/models/ipadapter")).json()] \
                == ["e.safetensors"]
            assert (await client.get("/api/experiment/models/nope")).status == 404
            assert (await client.get("/experiment/models/configs")).status == 404

    run(go())


def test_a_link_back_up_is_walked_once(tmp_path):
    folder = tmp_path / "models" / "loras"
    write(folder / "one.safetensors", b"1")
    try:
        (folder / "loop").symlink_to(folder, target_is_directory=True)
    except OSError:
        pytest.skip("no symbolic links here")
    names = [f["name"] for f in model_library.list_models([str(folder)])]
    assert names == ["one.safetensors"]


def test_view_metadata(tmp_path):
    folder = tmp_path / "models" / "loras"
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(folder / "style.safetensors"),
              metadata={"modelspec.title": "Style", "ss_tags": "a, b"})
    save_file({"w": torch.zeros(2)}, str(folder / "bare.safetensors"))
    write(folder / "old.ckpt", b"\x80\x02}q\x00.")
    header = b"{}" + b" " * 6
    write(folder / "huge.safetensors", struct.pack("<Q", 2**62) + header)  # a header "length" of 4 EiB
    write(folder / "short.safetensors", struct.pack("<Q", 10_000) + b"{}")  # longer than the file
    write(folder / "list.safetensors", struct.pack("<Q", 2) + b"[]")
    write(folder / "tiny.safetensors", b"abc")

    async def go():
        async with served(tmp_path) as client:
            r = await client.get("/api/view_metadata/loras", params={"filename": "style.safetensors"})
            assert r.status == 200 and await r.json() == {"modelspec.title": "Style", "ss_tags": "a, b"}
            r = await client.get("/view_metadata/loras?filename=style.safetensors")
            assert r.status == 200
            for name in ("bare.safetensors", "old.ckpt", "huge.safetensors", "short.safetensors",
                         "list.safetensors", "tiny.safetensors", "missing.safetensors",
                         "../loras/style.safetensors", "/etc/passwd.safetensors", ""):
                r = await client.get("/api/view_metadata/loras", params={"filename": name})
                assert r.status == 404, name
                assert await r.read() == b"", name  # the frontend reads an empty body as "no metadata"
            r = await client.get("/api/view_metadata/nope", params={"filename": "style.safetensors"})
            assert r.status == 404
            assert (await client.get("/api/view_metadata/loras")).status == 404

    run(go())


def test_an_oversized_header_is_refused_before_reading(tmp_path, monkeypatch):
    path = write(tmp_path / "big.safetensors", struct.pack("<Q", 1000) + b"{" + b" " * 998 + b"}")
    assert safetensors_header.read_header(path) == {}
    assert safetensors_header.read_header(path, budget=999) is None
    reads = []
    real_open = open

    class Spy:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def read(self, n=-1):
            reads.append(n)
            return self.fh.read(n)

        def fileno(self):
            return self.fh.fileno()

    monkeypatch.setattr(safetensors_header, "open", lambda p, m: Spy(real_open(p, m)), raising=False)
    write(tmp_path / "huge.safetensors", struct.pack("<Q", safetensors_header.MAX_HEADER_BYTES + 1) + b"{}" * 10)
    assert safetensors_header.read_header(tmp_path / "huge.safetensors") is None
    assert reads == [8]  # only the length was read


def test_previews(tmp_path):
    folder = tmp_path / "models" / "checkpoints"
    write(folder / "plain.safetensors", b"m")
    write(folder / "plain.png", png())
    write(folder / "sub" / "other.ckpt", b"m")
    write(folder / "sub" / "other.preview.jpeg", _jpeg())
    folder.mkdir(parents=True, exist_ok=True)
    cover = base64.b64encode(png((0, 255, 0))).decode()
    save_file({"w": torch.zeros(1)}, str(folder / "covered.safetensors"),
              metadata={"ssmd_cover_images": json.dumps([cover])})
    save_file({"w": torch.zeros(1)}, str(folder / "none.safetensors"), metadata={"a": "b"})
    write(folder / "broken.safetensors", b"m")
    write(folder / "broken.png", b"not an image")

    async def go():
        async with served(tmp_path) as client:
            base = "/api/experiment/models/preview/checkpoints/0/"
            for name in ("plain.webp", "sub/other.webp", "covered.webp"):
                r = await client.get(base + name)
                assert r.status == 200, name
                assert r.headers["Content-Type"] == "image/webp"
                body = await r.read()
                assert is_webp(body), name
                if name == "covered.webp":
                    assert Image.open(io.BytesIO(body)).convert("RGB").getpixel((1, 1))[1] > 200
            for name in ("none.webp", "missing.webp", "broken.webp", "../checkpoints/plain.webp"):
                assert (await client.get(base + name)).status == 404, name
            assert (await client.get("/experiment/models/preview/checkpoints/99/plain.webp")).status == 404
            assert (await client.get("/experiment/models/preview/checkpoints/x/plain.webp")).status == 404
            assert (await client.get("/experiment/models/preview/nope/0/plain.webp")).status == 404

    run(go())


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="JPEG")
    return buf.getvalue()


# -- node help pages ------------------------------------------------------------------------------
def test_docs_from_a_folder(tmp_path):
    docs = tmp_path / "docs"
    write(docs / "KSampler" / "en.md", b"# KSampler\nhelp")
    write(docs / "KSampler" / "asset" / "x.png", png())
    web_root = tmp_path / "web"
    write(web_root / "index.html", b"<html>front</html>")

    async def go():
        async with served(tmp_path, docs=docs, frontend=web_root) as client:
            r = await client.get("/docs/KSampler/en.md")
            assert r.status == 200 and await r.read() == b"# KSampler\nhelp"
            assert "text/html" not in r.headers["Content-Type"]
            assert (await client.get("/docs/KSampler/asset/x.png")).status == 200
            for missing in ("/docs/Nope/en.md", "/docs/KSampler/xx.md", "/docs/../web/index.html"):
                r = await client.get(missing)
                assert r.status == 404, missing
                assert "text/html" not in r.headers.get("Content-Type", ""), missing
            assert await (await client.get("/")).text() == "<html>front</html>"
        async with served(tmp_path, docs="none", frontend=web_root) as client:  # no docs: still boots
            assert (await client.get("/docs/KSampler/en.md")).status == 404
            assert (await client.get("/")).status == 200

    run(go())
    with pytest.raises(ValueError, match="no such folder"):
        create_app(NodeRegistry(), Environment(device="cpu"), services={}, user_dir=tmp_path / "u",
                   frontend="none", docs=tmp_path / "absent")


def test_the_installed_docs_package_is_served(tmp_path):
    pytest.importorskip("comfyui_embedded_docs")

    async def go():
        async with served(tmp_path) as client:
            r = await client.get("/docs/KSampler/en.md")
            assert r.status == 200 and "KSampler" in await r.text()
            assert (await client.get("/docs/NoSuchNode/en.md")).status == 404

    run(go())


# -- descriptions and tooltips ------------------------------------------------------------------
def test_object_info_has_descriptions_and_tooltips(tmp_path):
    from latentgraph.nodes import create_registry

    registry = create_registry()

    async def go():
        async with served(tmp_path, registry) as client:
            info = await (await client.get("/api/object_info")).json()
            ks = info["KSampler"]
            assert ks["description"] and "\n" not in ks["description"]
            assert ks["input"]["required"]["seed"][1]["tooltip"]
            described = sum(1 for entry in info.values() if entry["description"])
            assert described >= len(info) - 1, [n for n, e in info.items() if not e["description"]]
            assert all("\n" not in entry["description"] for entry in info.values())

    run(go())
