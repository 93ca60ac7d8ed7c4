"""Workflow files: YAML for people and ComfyUI API JSON, one model, lossless round trips."""

from __future__ import annotations

import json

import pytest
import yaml

from latentgraph.graph import Link, Workflow, WorkflowError, validate
from conftest import FIXTURES

TOY_YAML = """\
description: adds two numbers and shows the sum twice
nodes:
  a: {type: Number, value: 2}
  b: {type: Number, value: 3, title: The second number}
  sum: {type: Add, a: a, b: b.INT}
  twice: {type: Scale, x: sum.0, factor: {from: a, output: INT}}
  words: {type: Concat, a: "sum", b: "line one\\nline two", sep: "-"}
  show: {type: Show, value: twice}
  show_words: {type: Show, value: words.text, label: [words, text]}
"""


def test_yaml_links_by_name_index_and_bare_id(toy):
    registry, _ = toy
    wf = Workflow.loads(TOY_YAML, "toy.yaml")
    assert wf.origin == "yaml" and wf.description.startswith("adds")
    assert wf["b"].title == "The second number"
    assert wf["twice"].inputs["factor"] == Link("a", "INT")
    assert wf["show_words"].inputs["label"] == Link("words", "text")
    plan = validate(wf, registry)
    assert plan.nodes["sum"].links == {"a": ("a", 0), "b": ("b", 0)}
    assert plan.nodes["twice"].links == {"x": ("sum", 0), "factor": ("a", 0)}
    assert plan.nodes["words"].consts["a"] == "sum"  # a STRING widget: a value, not a link
    assert plan.nodes["show_words"].links == {"value": ("words", 0), "label": ("words", 0)}


def test_yaml_to_api_and_back_is_lossless(toy):
    registry, _ = toy
    wf = Workflow.loads(TOY_YAML, "toy.yaml")
    api = wf.to_api(registry)
    assert api["sum"] == {"inputs": {"a": ["a", 0], "b": ["b", 0]}, "class_type": "Add", "_meta": {"title": "Add"}}
    assert api["b"]["_meta"] == {"title": "The second number"}
    assert api["twice"]["inputs"] == {"x": ["sum", 0], "factor": ["a", 0]}
    text = wf.to_yaml(registry)
    again = Workflow.loads(text, "again.yaml")
    assert again.to_api(registry) == api
    assert again.to_yaml(registry) == text
    # API -> YAML -> API through JSON text, as `convert` does
    from_json = Workflow.loads(json.dumps(api), "flow.json")
    assert from_json.origin == "api"
    assert Workflow.loads(from_json.to_yaml(registry)).to_api(registry) == api
    # the multi-line string is written as a literal block
    assert "b: |-\n      line one\n      line two" in text


def test_yaml_writer_uses_the_friendliest_link_form(toy):
    registry, _ = toy
    text = Workflow.loads(TOY_YAML).to_yaml(registry)
    doc = yaml.safe_load(text)["nodes"]
    assert doc["sum"] == {"type": "Add", "a": "a", "b": "b"}            # single output: bare id
    assert doc["show_words"]["value"] == "words.text"                   # several outputs: by name
    assert doc["twice"]["factor"] == {"from": "a", "output": "INT"}     # widget input: explicit form
    assert doc["show_words"]["label"] == {"from": "words", "output": "text"}


def test_reserved_input_names_go_under_inputs(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("n", "Number", value=1)
    wf["n"].inputs["type"] = "an input called type"
    text = wf.to_yaml(registry)
    assert yaml.safe_load(text)["nodes"]["n"] == {"type": "Number", "value": 1,
                                                  "inputs": {"type": "an input called type"}}
    back = Workflow.loads(text)
    assert back["n"].class_type == "Number" and back["n"].inputs["type"] == "an input called type"


def test_list_constants_keep_their_wrapper(toy):
    registry, _ = toy
    wf = Workflow.from_api({"n": {"class_type": "Number", "inputs": {"value": {"__value__": [1, 2]}}}})
    api = wf.to_api(registry)
    assert api["n"]["inputs"]["value"] == {"__value__": [1, 2]}
    assert Workflow.loads(wf.to_yaml(registry)).to_api(registry) == api


def test_comfyui_api_file_round_trips(toy):
    """ComfyUI's own default graph: links by index, titles in _meta; no registry needed."""
    path = FIXTURES / "default.api.json"
    original = json.loads(path.read_text())
    wf = Workflow.load(path)
    assert len(wf) == 7 and wf["3"].class_type == "KSampler"
    assert wf["3"].inputs["model"] == Link("4", 0) and wf["3"].inputs["seed"] == 685468484323813
    assert wf["6"].title == "CLIP Text Encode (Prompt)"
    assert wf.to_api() == original
    assert Workflow.loads(wf.to_yaml()).to_api() == original


def test_prompt_request_body_is_accepted():
    body = {"prompt": {"1": {"class_type": "Number", "inputs": {"value": 1}}},
            "client_id": "abc", "extra_data": {"extra_pnginfo": {"workflow": {"nodes": []}}}}
    wf = Workflow.loads(json.dumps(body))
    assert list(wf) == ["1"] and wf.extra["extra_pnginfo"] == {"workflow": {"nodes": []}}


def test_python_builder_set_get_and_copy(toy):
    registry, _ = toy
    wf = Workflow()
    a = wf.add("a", "Number", value=1)
    cat = wf.add("cat", "Concat", a="x", b="y")
    wf.add("sc", "Scale", x=a, factor=2)
    wf.add("show", "Show", value=cat.length)
    wf.set("sc.factor", 5)
    assert wf.get("sc.factor") == 5 and wf.get("sc.x") == Link("a", None)
    assert wf.get("show.value") == Link("cat", "length")
    twin = wf.copy()
    twin.set("sc.factor", 1)
    assert wf.get("sc.factor") == 5
    with pytest.raises(WorkflowError, match="node 'nope'"):
        wf.set("nope.x", 1)
    with pytest.raises(WorkflowError, match="NODE.INPUT"):
        wf.set("nodots", 1)
    with pytest.raises(WorkflowError, match="already exists"):
        wf.add("a", "Number")
    assert wf.to_api(registry)["show"]["inputs"]["value"] == ["cat", 1]


def test_to_api_without_registry_needs_index_links():
    wf = Workflow()
    wf.add("a", "Number", value=1)
    wf.add("show", "Show", value=Link("a", "INT"))
    with pytest.raises(WorkflowError, match="cannot resolve output 'INT'"):
        wf.to_api()


def test_png_with_a_prompt_chunk_loads(tmp_path, toy):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("prompt", json.dumps({"1": {"class_type": "Number", "inputs": {"value": 4}}}))
    path = tmp_path / "shot.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    wf = Workflow.load(path)
    assert wf.origin == "png" and wf["1"].inputs == {"value": 4}
