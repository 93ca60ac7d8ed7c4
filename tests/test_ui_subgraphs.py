"""Subgraphs in UI-format workflows are flattened as ComfyUI's frontend flattens them. The
fixtures in tests/fixtures/subgraphs were made by the real frontend (comfyui-frontend-package
1.58.1): the workflow files by its own "convert to subgraph" and Save, or edits of those, and
every .api.json by its graphToPrompt on exactly that file (see the folder's README)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from latentgraph.graph.errors import ValidationError, WorkflowError
from latentgraph.graph.ui_format import ui_to_api
from latentgraph.graph.validate import validate
from latentgraph.graph.workflow import Workflow
from latentgraph.nodes import create_registry

from test_ui_format import meaning

FIXTURES = Path(__file__).parent / "fixtures" / "subgraphs"
NAMES = sorted(p.name[: -len(".ui.json")] for p in FIXTURES.glob("*.ui.json"))
# the frontend keeps nodes that reach no output; we drop them (the server would ignore them)
UNREACHABLE_IN_FRONTEND = {"bypass_inside": {"6", "7"}, "bypassed_instance": {"4", "6", "7"},
                           "muted_instance": {"4", "6", "7"}}


@pytest.fixture(scope="module")
def registry():
    return create_registry()


def load(name: str) -> tuple[dict, dict]:
    return (json.loads((FIXTURES / f"{name}.ui.json").read_text()),
            json.loads((FIXTURES / f"{name}.api.json").read_text()))


def test_the_fixture_set():
    assert NAMES == ["basic", "bypass_inside", "bypassed_instance", "muted_instance", "nested", "nested_proxy",
                     "nested_values", "primitive_into_instance", "proxy_widgets_empty", "proxy_widgets_values",
                     "reroute_inside", "schema1", "short_values", "two_instances", "two_promoted"]


@pytest.mark.parametrize("name", [n for n in NAMES if n != "primitive_into_instance"])
def test_each_converts_to_what_the_frontend_made(registry, name):
    ui, want = load(name)
    assert ui["definitions"]["subgraphs"]
    got = meaning(ui_to_api(ui, registry, source=f"{name}.ui.json"))
    want = meaning(want)
    dropped = UNREACHABLE_IN_FRONTEND.get(name, set())
    assert set(want) - set(got) == dropped
    assert got == {k: v for k, v in want.items() if k not in dropped}


def test_ids_are_prefixed_by_the_instance_path(registry):
    nested = ui_to_api(load("nested")[0], registry)
    ids = sorted(k for k, v in nested.items() if v["class_type"] == "CLIPTextEncode")
    assert len(ids) == 2 and all(len(k.split(":")) == 3 for k in ids)  # outer:inner:node
    sampler = next(k for k, v in nested.items() if v["class_type"] == "KSampler")
    assert len(sampler.split(":")) == 2
    assert nested[sampler]["inputs"]["positive"][0] in ids and nested[sampler]["inputs"]["model"] == ["4", 0]


def test_promoted_values_per_instance(registry):
    def seeds(name):
        prompt = ui_to_api(load(name)[0], registry)
        return sorted(v["inputs"]["seed"] for v in prompt.values() if v["class_type"] == "KSampler")
    assert seeds("basic") == [4242]                    # the value set on the instance
    assert seeds("two_instances") == [777, 4242]       # one definition, two values
    assert seeds("proxy_widgets_empty") == [685468484323813]  # no value on the instance: the inner one
    assert seeds("proxy_widgets_values") == [99]
    widths = [v["inputs"]["width"] for v in ui_to_api(load("proxy_widgets_values")[0], registry).values()
              if v["class_type"] == "EmptyLatentImage"]
    assert widths == [333]                              # a proxy widget with no subgraph input
    two = [v["inputs"] for v in ui_to_api(load("two_promoted")[0], registry).values() if v["class_type"] == "KSampler"]
    assert (two[0]["seed"], two[0]["steps"]) == (31337, 9)
    short = [v["inputs"] for v in ui_to_api(load("short_values")[0], registry).values() if v["class_type"] == "KSampler"]
    assert (short[0]["seed"], short[0]["steps"]) == (31337, 20)  # steps keeps its own value


def test_nested_promoted_values(registry):
    texts = {v["inputs"]["text"] for v in ui_to_api(load("nested_values")[0], registry).values()
             if v["class_type"] == "CLIPTextEncode"}
    assert texts == {"blurry", "a red circle on a blue background"}
    prompt = ui_to_api(load("nested_proxy")[0], registry)
    texts = sorted(v["inputs"]["text"] for v in prompt.values() if v["class_type"] == "CLIPTextEncode")
    assert "lowres" in texts and len(texts) == 2
    assert [v["inputs"]["seed"] for v in prompt.values() if v["class_type"] == "KSampler"] == [5]


def test_a_primitive_feeding_an_instance_input_wins(registry):
    """The frontend queues the inner widget's stored seed here, ignoring the PrimitiveNode the user
    sees connected; we take the PrimitiveNode's value. All else equals the frontend's prompt."""
    ui, want = load("primitive_into_instance")
    got = ui_to_api(ui, registry)
    sampler = next(k for k, v in got.items() if v["class_type"] == "KSampler")
    assert got[sampler]["inputs"]["seed"] == 5555 and want[sampler]["inputs"]["seed"] == 685468484323813
    got[sampler]["inputs"]["seed"] = want[sampler]["inputs"]["seed"]
    assert meaning(got) == meaning(want)


def test_bypassed_and_muted_instances(registry):
    for name in ("bypassed_instance", "muted_instance"):
        prompt = ui_to_api(load(name)[0], registry)
        assert [v["class_type"] for v in prompt.values()] == ["SaveImage"]  # no images input left
        assert "images" not in next(iter(prompt.values()))["inputs"]
    inside = ui_to_api(load("bypass_inside")[0], registry)
    decode = next(v for v in inside.values() if v["class_type"] == "VAEDecode")
    assert inside[decode["inputs"]["samples"][0]]["class_type"] == "EmptyLatentImage"


def test_schema_1_is_read(registry):
    ui, _ = load("schema1")
    assert ui["version"] == 1 and isinstance(ui["links"][0], dict)
    assert meaning(ui_to_api(ui, registry)) == meaning(ui_to_api(load("basic")[0], registry))


def test_a_subgraph_that_contains_itself_is_refused(registry):
    ui, _ = load("basic")
    ui = copy.deepcopy(ui)
    sub = ui["definitions"]["subgraphs"][0]
    inner = next(n for n in sub["nodes"] if n["type"] == "VAEDecode")
    inner["type"] = sub["id"]  # the definition now holds an instance of itself
    with pytest.raises(WorkflowError, match=r"loop\.json.*subgraph 'New Subgraph' contains itself"):
        ui_to_api(ui, registry, source="loop.json")


def test_a_real_template_reports_exactly_its_unsupported_nodes(registry):
    path = FIXTURES / "templates" / "image_anima_preview.json"
    wf = Workflow.load(path, registry)
    assert wf.origin == "ui"
    assert sum(1 for s in wf.nodes.values() if s.class_type != "SaveImage") == 8  # all inside subgraph 60
    assert all(k.startswith("60:") for k, s in wf.nodes.items() if s.class_type != "SaveImage")
    texts = [s.inputs["text"] for s in wf.nodes.values() if s.class_type == "CLIPTextEncode"]
    assert any(t.startswith("masterpiece, best quality") for t in texts)  # the inner value (no instance value)
    with pytest.raises(ValidationError) as raised:
        validate(wf, registry)
    report = raised.value.report
    missing = sorted((e["class_type"], k) for k, e in report.node_errors.items()
                     if any(err["type"] == "missing_node_type" for err in e["errors"]))
    # UNETLoader and CLIPLoader are built in since issue 16: only their files are missing here
    assert missing == []
    assert "unsupported nodes" not in report.format()
    assert {k: e["class_type"] for k, e in report.node_errors.items()} == {
        "60:15": "VAELoader", "60:44": "UNETLoader", "60:45": "CLIPLoader"}


def demo_ui_workflow() -> dict:
    """basic.ui.json on the shipped demo model: 64x64, 6 steps, the shapes vocabulary."""
    ui = copy.deepcopy(load("basic")[0])
    for node in ui["nodes"]:
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"] = ["latentgraph-shapes.safetensors"]
        if node["type"] == "CLIPTextEncode":
            node["widgets_values"] = ["a red circle on a blue background" if node["id"] == 6 else ""]
    for node in ui["definitions"]["subgraphs"][0]["nodes"]:
        if node["type"] == "EmptyLatentImage":
            node["widgets_values"] = [64, 64, 1]
        if node["type"] == "KSampler":
            node["widgets_values"][2] = 6
    return ui


def test_a_png_from_a_ui_workflow_runs_again_to_the_same_bytes(tmp_path):
    """Round trip: the PNG SaveImage writes (prompt + workflow chunks) runs again, from either
    chunk, to a byte-identical PNG — pixels and metadata."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    from latentgraph import cli

    src = tmp_path / "subgraph.json"
    src.write_text(json.dumps(demo_ui_workflow()))
    assert cli.main(["run", str(src), "--output-dir", str(tmp_path / "a"), "--device", "cpu", "--no-progress"]) == 0
    (first,) = (tmp_path / "a").glob("*.png")
    with Image.open(first) as im:
        chunks = dict(im.text)
    assert set(chunks) == {"prompt", "workflow"}
    prompt = json.loads(chunks["prompt"])
    assert any(k.startswith("17:") and v["class_type"] == "KSampler" for k, v in prompt.items())
    assert json.loads(chunks["workflow"]) == json.loads(src.read_text())

    assert cli.main(["run", str(first), "--output-dir", str(tmp_path / "b"), "--device", "cpu", "--no-progress"]) == 0
    (second,) = (tmp_path / "b").glob("*.png")
    assert second.read_bytes() == first.read_bytes()

    # a PNG with only the UI workflow (as some tools strip the prompt) converts and runs the same
    only_ui = tmp_path / "only_ui.png"
    info = PngInfo()
    info.add_text("workflow", chunks["workflow"])
    with Image.open(first) as im:
        im.save(only_ui, pnginfo=info)
    assert cli.main(["run", str(only_ui), "--output-dir", str(tmp_path / "c"), "--device", "cpu", "--no-progress"]) == 0
    (third,) = (tmp_path / "c").glob("*.png")
    assert third.read_bytes() == first.read_bytes()
