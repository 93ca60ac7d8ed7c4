"""Plugins: folder packs (latentgraph and ComfyUI V1 style), broken packs beside good ones,
name collisions, an entry-point plugin installed with pip, and plugin nodes used from a YAML
workflow, from the CLI and from the server. Fixtures: tests/fixtures/plugins (see its README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgraph.cli import main
from latentgraph.graph import Environment, Executor, ValidationError, Workflow
from latentgraph.graph.validate import validate
from latentgraph.nodes import create_registry
from latentgraph.plugins import PluginError, load_plugins, read_config

ROOT = Path(__file__).resolve().parents[1]
MIXED = Path(__file__).parent / "fixtures" / "plugins" / "mixed"
EXAMPLE = ROOT / "examples" / "latentgraph-example-plugin"


@pytest.fixture(scope="module")
def loaded():
    registry = create_registry()
    infos = load_plugins(registry, [MIXED], entry_points=False)
    return registry, {p.name: p for p in infos}


def test_every_pack_is_reported_and_the_good_ones_load(loaded):
    registry, packs = loaded
    assert sorted(packs) == ["also_posterize", "bad_declaration", "broken_syntax", "comfy_pack", "missing_dependency",
                             "needs_comfyui", "raises", "registers", "tint"]  # _private.py, *.disabled skipped
    status = {name: p.status for name, p in packs.items()}
    assert status == {"also_posterize": "loaded", "bad_declaration": "failed", "broken_syntax": "failed",
                      "comfy_pack": "loaded", "missing_dependency": "failed", "needs_comfyui": "needs ComfyUI",
                      "raises": "failed", "registers": "loaded", "tint": "loaded"}
    assert packs["broken_syntax"].error == "SyntaxError: invalid syntax (broken_syntax.py, line 4)"
    assert packs["missing_dependency"].error == "missing dependency: No module named 'latentgraph_no_such_dependency'"
    assert packs["raises"].error == "RuntimeError: this pack cannot start: no GPU named 'imaginary' (at raises.py:5)"
    assert packs["bad_declaration"].error.startswith("bad declaration: NoFunction (class NoFunction): FUNCTION must")
    assert packs["needs_comfyui"].needs == "comfy_api_nodes"  # folder_paths and comfy.utils it got
    assert packs["comfy_pack"].kind == "comfyui" and packs["tint"].kind == "latentgraph"
    assert packs["comfy_pack"].nodes == ["SolidColor", "SplitBatch", "CountImages", "Counter", "FileStamp", "ShowText"]
    assert packs["registers"].nodes == ["Checkerboard"]
    assert all(p.import_seconds > 0 for p in packs.values() if p.status == "loaded")
    # a failed pack adds nothing, not even its well-declared nodes
    assert "FineButUnused" not in registry and "NoFunction" not in registry
    assert len(registry) == len(create_registry()) + sum(len(p.nodes) for p in packs.values())
    assert registry.plugins == list(packs.values())


def test_builtins_are_never_replaced_and_collisions_are_namespaced(loaded):
    registry, packs = loaded
    assert registry["KSampler"].source == "builtin" and registry["KSampler"].category == "sampling"
    assert registry["also_posterize/KSampler"].category == "plugin/other"
    assert "Posterize" not in registry
    assert registry.ambiguous == {"Posterize": ["also_posterize/Posterize", "tint/Posterize"]}
    assert packs["tint"].nodes == ["Tint", "tint/Posterize"]
    assert "'Posterize' is also defined by also_posterize; this one is 'tint/Posterize'" in packs["tint"].notes
    assert any("'KSampler' is already a node (builtin)" in n for n in packs["also_posterize"].notes)
    info = registry.object_info()
    assert info["tint/Posterize"]["display_name"] == "Posterize (tint)"
    assert info["tint/Posterize"]["python_module"] == "custom_nodes.tint"
    assert info["SolidColor"]["display_name"] == "Solid Color (pack)"
    # a workflow naming the bare, ambiguous name is told which ones exist
    wf = Workflow()
    board = wf.add("c", "Checkerboard")
    wf.add("s", "PreviewImage", images=wf.add("p", "Posterize", image=board))
    with pytest.raises(ValidationError) as raised:
        validate(wf, registry)
    text = raised.value.format()
    assert "Node type 'Posterize' is not registered; it is defined by several plugins; use one of " \
           "'also_posterize/Posterize', 'tint/Posterize'" in text


def test_comfyui_v1_pack_runs(loaded, tmp_path):
    registry, _ = loaded
    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    ex = Executor(registry, env)
    wf = Workflow()
    solid = wf.add("solid", "SolidColor", width=16, height=8, color="#ff8000", batch=3)
    split = wf.add("split", "SplitBatch", images=solid)  # OUTPUT_IS_LIST: three images of batch 1
    tint = wf.add("tint", "Tint", image=split, color="#0000ff", strength=0.5)  # runs once per item
    count = wf.add("count", "CountImages", images=tint, label="images")  # INPUT_IS_LIST: sees all three
    wf.add("show", "ShowText", text=count[1])
    result = ex.run(wf, targets=["show", "tint", "count"])
    assert result.outputs["show"] == {"text": ["show: images=3 (auth=None)"]}
    assert result.get("count", 0) == 3
    tinted = result.get("tint")
    assert isinstance(tinted, list) and [t.shape for t in tinted] == [(1, 8, 16, 3)] * 3
    assert torch.allclose(tinted[0][0, 0, 0], torch.tensor([0.5, 0.5 * 128 / 255, 0.5]), atol=1e-6)
    assert result.executed.count("tint") == 1


def test_v1_validate_inputs_and_is_changed(loaded, tmp_path):
    registry, _ = loaded
    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    bad = Workflow()
    bad.add("show", "PreviewImage", images=bad.add("solid", "SolidColor", width=16, height=8, color="green", batch=1))
    with pytest.raises(ValidationError) as raised:
        validate(bad, registry, env)
    assert "color - color must be #rrggbb, got 'green'" in raised.value.format()
    # width is not named by VALIDATE_INPUTS: the declared range still applies
    bad.nodes["solid"].inputs.update(color="#000000", width=4)
    with pytest.raises(ValidationError, match="Value 4 smaller than min of 8"):
        validate(bad, registry, env)

    ex = Executor(registry, env)
    counter = Workflow()
    counter.add("c", "Counter", value=10)
    # IS_CHANGED is NaN: it runs every time, on the same instance (ComfyUI keeps one per node id)
    assert [ex.run(counter).outputs["c"]["calls"] for _ in range(3)] == [[1], [2], [3]]

    note = tmp_path / "note.txt"
    note.write_text("one")
    stamp = Workflow()
    stamp.add("show", "ShowText", text=stamp.add("f", "FileStamp", path=str(note)))
    first = ex.run(stamp)
    assert first.outputs["show"]["text"] == ["show: one (auth=None)"]
    assert "f" not in ex.run(stamp).executed  # unchanged file: cached
    note.write_text("two")
    os.utime(note, ns=(1, 10**18))
    again = ex.run(stamp)
    assert "f" in again.executed and again.outputs["show"]["text"] == ["show: two (auth=None)"]


def test_plugin_nodes_from_a_yaml_workflow_on_the_cli(tmp_path, capsys):
    workflow = tmp_path / "board.yaml"
    workflow.write_text(
        "nodes:\n"
        "  board: {type: Checkerboard, width: 32, cell: 8}\n"
        "  poster: {type: tint/Posterize, image: board, levels: 2}\n"
        "  tint: {type: Tint, image: poster, color: '#ff0000', strength: 0.5}\n"
        "  save: {type: SaveImage, images: tint, filename_prefix: board}\n")
    assert main(["run", str(workflow), "--custom-nodes", str(MIXED), "--output-dir", str(tmp_path / "out"),
                 "--no-plugins", "--no-progress"]) == 1  # --no-plugins: the nodes are unknown
    assert "Node type 'Checkerboard' is not registered" in capsys.readouterr().err
    assert main(["run", str(workflow), "--custom-nodes", str(MIXED), "--output-dir", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    from PIL import Image

    picture = Image.open(tmp_path / "out" / "board_00001_.png")
    assert picture.size == (32, 32)
    assert picture.getpixel((0, 0)) == (127, 0, 0) and picture.getpixel((8, 0)) == (255, 127, 127)  # 8-bit truncation
    # the CLI lists the packs
    assert main(["nodes", "--plugins", "--custom-nodes", str(MIXED)]) == 0
    out = capsys.readouterr().out
    assert ("needs_comfyui  [?]  needs ComfyUI: needs comfy_api_nodes, which latentgraph's ComfyUI "
            "compatibility layer does not provide") in out
    assert "9 plugin packs: 4 loaded, 5 not; 11 plugin nodes" in out
    # which ComfyUI names a pack uses, read from its source, and which the layer lacks
    assert ("  ComfyUI names: 2 provided by latentgraph's compatibility layer; missing: comfy_api_nodes, "
            "comfy_api_nodes.apinode_utils.upload_images_to_comfyapi") in out
    assert main(["nodes", "--plugins", "--json", "--custom-nodes", str(MIXED)]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["tint"]["nodes"] == ["Tint", "tint/Posterize"] and listed["tint"]["import_ms"] > 0
    assert listed["needs_comfyui"]["comfyui_names"]["provided"] == ["comfy.utils", "folder_paths"]
    assert listed["tint"]["comfyui_names"] is None  # a latentgraph pack


def test_config_file_and_folder_errors(tmp_path, capsys):
    config = tmp_path / "conf" / "latentgraph.yaml"
    config.parent.mkdir()
    (tmp_path / "conf" / "nodes").mkdir()
    (tmp_path / "conf" / "nodes" / "hello.py").write_text(
        "from typing import Annotated\nfrom latentgraph.graph import String, node\n\n"
        "@node(outputs=['STRING'])\ndef Hello(name: Annotated[str, String('world')]) -> str:\n"
        "    return 'hello ' + name\n")
    config.write_text("custom_nodes: [nodes, missing_folder]\n")
    assert read_config(config)["custom_nodes"] == [config.parent / "nodes", config.parent / "missing_folder"]
    assert main(["nodes", "--plugins", "--json", "--config", str(config)]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["hello"]["nodes"] == ["Hello"]
    assert listed["missing_folder"]["status"] == "failed" and listed["missing_folder"]["error"] == "folder not found"
    config.write_text("custom_node: [nodes]\n")
    with pytest.raises(PluginError, match="unknown key 'custom_node'"):
        read_config(config)
    assert main(["nodes", "--plugins", "--config", str(config)]) == 1
    assert "latentgraph.yaml: unknown key 'custom_node' (known: custom_nodes)" in capsys.readouterr().err


def test_packs_get_the_compatibility_layer_even_if_something_has_its_name(tmp_path, monkeypatch):
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "folder_paths.py").write_text("X = 1\n")  # an unrelated module that happens to be importable
    monkeypatch.syspath_prepend(str(shadow))
    packs = tmp_path / "packs"
    packs.mkdir()
    (packs / "uses_comfy.py").write_text(
        "import folder_paths\nMODELS = folder_paths.models_dir\nNODE_CLASS_MAPPINGS = {}\n")
    (packs / "uses_missing.py").write_text("import comfy.ldm_no_such_part\nNODE_CLASS_MAPPINGS = {}\n")
    (packs / "optional_comfy.py").write_text(
        "try:\n    import comfy_api_nodes.apis\nexcept ImportError:\n    comfy_api_nodes = None\n"
        "from typing import Annotated\nfrom latentgraph.graph import Int, node\n\n"
        "@node(outputs=['INT'])\ndef Twice(x: Annotated[int, Int(1)]) -> int:\n    return 2 * x\n")
    registry = create_registry()
    infos = {p.name: p for p in load_plugins(registry, [packs], entry_points=False)}
    assert infos["uses_comfy"].status == "loaded"
    module = sys.modules["latentgraph_custom_nodes.uses_comfy"]
    assert not hasattr(module.folder_paths, "X") and isinstance(module.MODELS, str)  # the layer's, not the shadow
    assert infos["uses_missing"].status == "needs ComfyUI" and infos["uses_missing"].needs == "comfy.ldm_no_such_part"
    assert infos["optional_comfy"].status == "loaded" and "Twice" in registry  # it handled the ImportError
    # latentgraph's own code (and any library) importing folder_paths still gets the unrelated module
    import importlib

    sys.modules.pop("folder_paths", None)
    assert importlib.import_module("folder_paths").X == 1
    sys.modules.pop("folder_paths", None)


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    """The example plugin pip-installed into a fresh site folder (no network: no build isolation)."""
    site = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--target", str(site), str(EXAMPLE)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return site


def test_entry_point_plugin_installed_with_pip(example_site, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(example_site))
    listing = subprocess.run([sys.executable, "-m", "latentgraph", "nodes", "--plugins", "--json"],
                             capture_output=True, text=True, env=env, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    (pack,) = [p for p in json.loads(listing.stdout) if p["name"] == "example"]
    assert pack["status"] == "loaded" and pack["kind"] == "latentgraph"
    assert pack["nodes"] == ["Grayscale", "Vignette"]
    assert pack["source"] == ("entry point example = latentgraph_example:register "
                              "(latentgraph-example-plugin 0.1.0)")
    run = subprocess.run([sys.executable, "-m", "latentgraph", "run", str(EXAMPLE / "workflow.yaml"),
                          "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    from PIL import Image

    picture = Image.open(tmp_path / "out" / "example_00001_.png").convert("RGB")
    pixels = torch.from_numpy(np.asarray(picture, dtype=np.float32))
    assert torch.equal(pixels[..., 0], pixels[..., 1]) and torch.equal(pixels[..., 1], pixels[..., 2])  # gray
    # the same picture without the vignette: corners darker by 1 - 0.6 (factor 0.4), the centre kept
    plain = subprocess.run([sys.executable, "-m", "latentgraph", "run", str(EXAMPLE / "workflow.yaml"),
                            "--set", "vignette.strength=0", "--output-dir", str(tmp_path / "plain"),
                            "--device", "cpu", "--no-progress"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    base = torch.from_numpy(np.asarray(Image.open(tmp_path / "plain" / "example_00001_.png").convert("RGB"),
                                       dtype=np.float32))
    assert abs(float(pixels[0, 0, 0]) - round(float(base[0, 0, 0]) * 0.4)) <= 1
    assert abs(float(pixels[31, 31, 0]) - float(base[31, 31, 0])) <= 1


def test_plugins_on_the_server(loaded, tmp_path):
    from aiohttp.test_utils import TestClient, TestServer

    from latentgraph.server import create_app

    registry, packs = loaded
    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", input_dir=tmp_path / "in",
                      models_dir=tmp_path / "models", device="cpu")

    async def scenario():
        app = create_app(registry, env, user_dir=tmp_path / "user", frontend="none")
        async with TestClient(TestServer(app)) as client:
            listed = await (await client.get("/api/plugins")).json()
            assert listed == [p.to_json() for p in packs.values()]
            one = await (await client.get("/object_info/tint/Posterize")).json()
            assert list(one) == ["tint/Posterize"] and one["tint/Posterize"]["python_module"] == "custom_nodes.tint"
            prompt = {"b": {"class_type": "Checkerboard", "inputs": {"width": 16, "cell": 4}},
                      "p": {"class_type": "also_posterize/Posterize", "inputs": {"image": ["b", 0], "levels": 2}},
                      "s": {"class_type": "SaveImage", "inputs": {"images": ["p", 0], "filename_prefix": "srv"}}}
            posted = await (await client.post("/prompt", json={"prompt": prompt})).json()
            for _ in range(200):
                history = await (await client.get(f"/history/{posted['prompt_id']}")).json()
                if history:
                    break
                await asyncio.sleep(0.05)
            entry = history[posted["prompt_id"]]
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"]["s"]["images"][0]["filename"] == "srv_00001_.png"

    import asyncio

    asyncio.run(scenario())
