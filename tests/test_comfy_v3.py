"""ComfyUI's V3 node API (comfy_api.latest) for packs, used the way real V3 packs use it: a pack
that hands its nodes over from ``async def comfy_entrypoint()``, and one that puts V3 classes in
NODE_CLASS_MAPPINGS. Their /object_info entries are compared with what ComfyUI 0.3.64 returns
for the same schemas (worked out from its comfy_api/latest/_io.py: Schema.get_v1_info), and
prompts run through the Executor with their values checked."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from PIL import Image

from latentgraph.graph import Environment, Executor, ValidationError, Workflow
from latentgraph.graph.expansion import Blocker
from latentgraph.graph.validate import validate
from latentgraph.nodes import create_registry
from latentgraph.plugins import load_plugins

V3_INIT = '''
from comfy_api.latest import ComfyExtension, io

from .nodes_v3 import NODES, EVENTS


class V3Pack(ComfyExtension):
    async def on_load(self) -> None:
        EVENTS.append("on_load")

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES


async def comfy_entrypoint() -> ComfyExtension:
    return V3Pack()
'''

V3_NODES = '''
import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import GraphBuilder

EVENTS = []  # what ran, in order: the tests count executions with it
VERSIONS = {}  # what fingerprint_inputs reports for a name


class Brighten(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="V3Brighten", display_name="Brighten (V3)", category="v3/image",
            description="Adds to one channel inside the mask.",
            inputs=[io.Image.Input("image", tooltip="the picture"),
                    io.Float.Input("amount", default=0.25, min=-1.0, max=1.0, step=0.05,
                                   display_mode=io.NumberDisplay.slider),
                    io.Combo.Input("channel", options=["all", "red", "green", "blue"], default="all"),
                    io.Mask.Input("mask", optional=True)],
            outputs=[io.Image.Output(tooltip="brighter"), io.Mask.Output(display_name="used_mask")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def execute(cls, image, amount, channel, mask=None) -> io.NodeOutput:
        EVENTS.append(("Brighten", cls.hidden.unique_id))
        if mask is None:
            mask = torch.ones(image.shape[:3])
        pick = torch.ones(3) if channel == "all" else torch.eye(3)[["red", "green", "blue"].index(channel)]
        out = (image + amount * mask[..., None] * pick).clamp(0, 1)
        return io.NodeOutput(out, mask, ui=ui.PreviewText(f"brightened by node {cls.hidden.unique_id}"))


class Show(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Show", category="v3/image", is_output_node=True,
                         inputs=[io.Image.Input("images")])

    @classmethod
    def execute(cls, images):
        return io.NodeOutput(ui=ui.PreviewImage(images, cls=cls))


class Make(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Make", category="v3/numbers",
                         inputs=[io.Int.Input("value", default=0, min=-100, max=100)], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value):
        EVENTS.append(("Make", value))
        return io.NodeOutput(value)


class AddOne(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3AddOne", category="v3/numbers",
                         inputs=[io.Int.Input("value", default=0, min=-1000, max=1000)], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value + 1)


class Switch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Switch", category="v3/flow",
                         inputs=[io.Boolean.Input("select", default=True, label_on="first", label_off="second"),
                                 io.AnyType.Input("first", lazy=True), io.AnyType.Input("second", lazy=True)],
                         outputs=[io.AnyType.Output()])

    @classmethod
    def check_lazy_status(cls, select, first=None, second=None):
        return ["first"] if select else ["second"]

    @classmethod
    def execute(cls, select, first=None, second=None):
        return io.NodeOutput(first if select else second)


class Repeat(io.ComfyNode):
    """Expands into a chain of V3AddOne nodes."""

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Repeat", category="v3/flow", enable_expand=True,
                         inputs=[io.Int.Input("value", default=0), io.Int.Input("times", default=2, min=0, max=10)],
                         outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value, times):
        if times == 0:
            return io.NodeOutput(value)
        graph = GraphBuilder()
        current = value
        for _ in range(times):
            current = graph.node("V3AddOne", value=current).out(0)
        return io.NodeOutput(current, expand=graph.finalize())


class NoExpand(Repeat):
    @classmethod
    def define_schema(cls):
        schema = super().define_schema()
        schema.node_id, schema.enable_expand = "V3NoExpand", False
        return schema


class Range(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Range", category="v3/lists",
                         inputs=[io.Int.Input("count", default=3, min=1, max=16)],
                         outputs=[io.Int.Output(is_output_list=True)])

    @classmethod
    def execute(cls, count):
        return io.NodeOutput(list(range(count)))


class Total(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Total", category="v3/lists", is_input_list=True,
                         inputs=[io.Int.Input("values")],
                         outputs=[io.Int.Output(display_name="sum"), io.String.Output(display_name="text")])

    @classmethod
    def execute(cls, values):
        return io.NodeOutput(sum(values), ",".join(map(str, values)))


class Even(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Even", category="v3/numbers", hidden=[io.Hidden.unique_id],
                         inputs=[io.Int.Input("value", default=2, min=0, max=10), io.String.Input("label")],
                         outputs=[io.Int.Output()])

    @classmethod
    def validate_inputs(cls, value):
        return True if value % 2 == 0 else f"{value} is odd (node {cls.hidden.unique_id})"

    @classmethod
    def execute(cls, value, label):
        return io.NodeOutput(value)


class Stamp(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Stamp", category="v3/cache",
                         inputs=[io.String.Input("name", default="a")], outputs=[io.String.Output()])

    @classmethod
    def fingerprint_inputs(cls, name):
        return VERSIONS.get(name, 0)

    @classmethod
    def execute(cls, name):
        EVENTS.append(("Stamp", name))
        return io.NodeOutput(f"{name}@{VERSIONS.get(name, 0)}")


class Ticket(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Ticket", category="v3/cache", not_idempotent=True,
                         inputs=[io.Int.Input("value", default=0)], outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value):
        EVENTS.append(("Ticket", value))
        return io.NodeOutput(value)


class Gate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Gate", category="v3/flow",
                         inputs=[io.Int.Input("value", default=0), io.Boolean.Input("open", default=True)],
                         outputs=[io.Int.Output()])

    @classmethod
    def execute(cls, value, open):
        return io.NodeOutput(value) if open else io.NodeOutput(block_execution="the gate is closed")


class Mix(io.ComfyNode):
    """A widget that also takes an INT link (MultiType over a FLOAT widget), and a pack's own type."""

    THING = io.Custom("V3_THING")

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Mix", category="v3/types",
                         inputs=[io.MultiType.Input(io.Float.Input("value", default=1.5, min=0.0), types=[io.Int]),
                                 cls.THING.Input("thing", optional=True)],
                         outputs=[cls.THING.Output("made"), io.Float.Output(display_name="doubled")])

    @classmethod
    def execute(cls, value, thing=None):
        return io.NodeOutput({"value": value, "before": thing}, float(value) * 2)


NODES = [Mix, Brighten, Show, Make, AddOne, Switch, Repeat, NoExpand, Range, Total, Even, Stamp, Ticket, Gate]
'''

MAPPED = '''
import asyncio

from comfy_api.v0_0_2 import io


class Double(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MappedDouble", category="mapped",
                         inputs=[io.Combo.Input("factor", options=[2, 3]), io.Int.Input("value", default=1)],
                         outputs=[io.Int.Output()], is_experimental=True)

    @classmethod
    async def execute(cls, factor, value):
        await asyncio.sleep(0)
        return (value * factor,)  # a tuple, as some packs return


class Remote(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="MappedRemote", category="mapped", outputs=[io.String.Output()],
                         inputs=[io.Combo.Input("pick", remote=io.RemoteOptions("/mapped/choices", True))])

    @classmethod
    def execute(cls, pick):
        return io.NodeOutput(f"picked {pick}")


class Legacy:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value - 1,)


NODE_CLASS_MAPPINGS = {"MappedDouble": Double, "MappedLegacy": Legacy, "MappedRemote": Remote}
NODE_DISPLAY_NAME_MAPPINGS = {"MappedDouble": "Double (mapped)"}


async def comfy_entrypoint():
    raise RuntimeError("ComfyUI reads NODE_CLASS_MAPPINGS first; this is never called")
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    packs = root / "custom_nodes"
    (packs / "v3_pack").mkdir(parents=True)
    (packs / "v3_pack" / "__init__.py").write_text(V3_INIT)
    (packs / "v3_pack" / "nodes_v3.py").write_text(V3_NODES)
    (packs / "v3_mapped").mkdir()
    (packs / "v3_mapped" / "__init__.py").write_text(MAPPED)
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models_dir=root / "models", device="cpu")
    registry = create_registry()
    infos = {i.name: i for i in load_plugins(registry, [packs], entry_points=False, env=env)}
    for info in infos.values():
        assert (info.status, info.error, info.missing) == ("loaded", None, []), info
    import sys

    nodes = sys.modules["latentgraph_custom_nodes.v3_pack.nodes_v3"]
    return root, env, registry, infos, nodes


def _run(executor, prompt, targets=None, events=None):
    listener = (lambda kind, data: events.append((kind, data))) if events is not None else None
    return executor.run(Workflow.from_api(prompt), targets=targets or list(prompt), listener=listener)


def _json(value):
    return json.loads(json.dumps(value))


# What ComfyUI 0.3.64's /object_info answers for these schemas (Schema.get_v1_info: every NodeInfoV1
# field, [type, options] for every input, combos as ["COMBO", {"options": ...}], hidden as [kind])
BRIGHTEN_INFO = {
    "input": {"required": {"image": ["IMAGE", {"tooltip": "the picture"}],
                           "amount": ["FLOAT", {"default": 0.25, "min": -1.0, "max": 1.0, "step": 0.05,
                                                "display": "slider"}],
                           "channel": ["COMBO", {"default": "all", "multiselect": False,
                                                 "options": ["all", "red", "green", "blue"]}]},
              "optional": {"mask": ["MASK", {}]},
              "hidden": {"unique_id": ["UNIQUE_ID"]}},
    "input_order": {"required": ["image", "amount", "channel"], "optional": ["mask"], "hidden": ["unique_id"]},
    "output": ["IMAGE", "MASK"], "output_is_list": [False, False], "output_name": ["IMAGE", "used_mask"],
    "output_tooltips": ["brighter", None], "name": "V3Brighten", "display_name": "Brighten (V3)",
    "description": "Adds to one channel inside the mask.", "python_module": "custom_nodes.v3_pack",
    "category": "v3/image", "output_node": False, "deprecated": False, "experimental": False, "api_node": False}

SWITCH_INFO = {
    "input": {"required": {"select": ["BOOLEAN", {"default": True, "label_on": "first", "label_off": "second"}],
                           "first": ["*", {"lazy": True}], "second": ["*", {"lazy": True}]}},
    "input_order": {"required": ["select", "first", "second"]},
    "output": ["*"], "output_is_list": [False], "output_name": ["*"], "output_tooltips": [None],
    "name": "V3Switch", "display_name": None, "description": "", "python_module": "custom_nodes.v3_pack",
    "category": "v3/flow", "output_node": False, "deprecated": False, "experimental": False, "api_node": False}

SHOW_INFO = {
    "input": {"required": {"images": ["IMAGE", {}]},
              "hidden": {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}},
    "input_order": {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]},
    "output": [], "output_is_list": [], "output_name": [], "output_tooltips": [],
    "name": "V3Show", "display_name": None, "description": "", "python_module": "custom_nodes.v3_pack",
    "category": "v3/image", "output_node": True, "deprecated": False, "experimental": False, "api_node": False}

MIX_INFO = {
    "input": {"required": {"value": ["FLOAT,INT", {"default": 1.5, "widgetType": "FLOAT", "min": 0.0}]},
              "optional": {"thing": ["V3_THING", {}]}},
    "input_order": {"required": ["value"], "optional": ["thing"]},
    "output": ["V3_THING", "FLOAT"], "output_is_list": [False, False], "output_name": ["V3_THING", "doubled"],
    "output_tooltips": [None, None], "name": "V3Mix", "display_name": None, "description": "",
    "python_module": "custom_nodes.v3_pack", "category": "v3/types", "output_node": False, "deprecated": False,
    "experimental": False, "api_node": False}

RANGE_TOTAL_OUTPUTS = ({"output": ["INT"], "output_is_list": [True], "output_name": ["INT"]},
                       {"output": ["INT", "STRING"], "output_is_list": [False, False], "output_name": ["sum", "text"]})

DOUBLE_INFO = {
    "input": {"required": {"factor": ["COMBO", {"multiselect": False, "options": [2, 3]}],
                           "value": ["INT", {"default": 1}]}},
    "input_order": {"required": ["factor", "value"]},
    "output": ["INT"], "output_is_list": [False], "output_name": ["INT"], "output_tooltips": [None],
    "name": "MappedDouble", "display_name": None, "description": "", "python_module": "custom_nodes.v3_mapped",
    "category": "mapped", "output_node": False, "deprecated": False, "experimental": True, "api_node": False}


def test_packs_load_from_comfy_entrypoint_and_mappings(site):
    root, env, registry, infos, nodes = site
    assert infos["v3_pack"].kind == "comfyui"
    assert infos["v3_pack"].nodes == ["V3Mix", "V3Brighten", "V3Show", "V3Make", "V3AddOne", "V3Switch", "V3Repeat",
                                      "V3NoExpand", "V3Range", "V3Total", "V3Even", "V3Stamp", "V3Ticket", "V3Gate"]
    assert nodes.EVENTS[:1] == ["on_load"] and nodes.EVENTS.count("on_load") == 1
    assert infos["v3_mapped"].nodes == ["MappedDouble", "MappedLegacy", "MappedRemote"]  # comfy_entrypoint never called
    assert registry["V3Brighten"].display_name == "Brighten (V3)"
    assert registry["MappedDouble"].display_name == "Double (mapped)"  # the mapping's, as the node list shows
    assert registry["V3Switch"].display_name == "V3Switch"


def test_object_info_is_comfyuis_v1_form_of_the_schema(site):
    root, env, registry, infos, nodes = site
    info = _json(registry.object_info(env))
    assert info["V3Brighten"] == BRIGHTEN_INFO
    assert info["V3Switch"] == SWITCH_INFO
    assert info["V3Show"] == SHOW_INFO
    assert info["MappedDouble"] == DOUBLE_INFO
    assert info["V3Mix"] == MIX_INFO
    for name, expected in zip(("V3Range", "V3Total"), RANGE_TOTAL_OUTPUTS):
        assert {k: info[name][k] for k in expected} == expected
    assert info["MappedLegacy"]["output"] == ["INT"]  # the V1 class beside it is read as V1


def test_images_masks_hidden_ui_and_optional_input(site):
    root, env, registry, infos, nodes = site
    prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 2, "batch_size": 1,
                                                             "color": 0x000000}},
              "m": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 4, "height": 2}},
              "b": {"class_type": "V3Brighten", "inputs": {"image": ["img", 0], "amount": 0.4, "channel": "green",
                                                          "mask": ["m", 0]}},
              "plain": {"class_type": "V3Brighten", "inputs": {"image": ["img", 0], "amount": 1.0,
                                                              "channel": "all"}}}
    events = []
    result = _run(Executor(registry, env), prompt, targets=["b", "plain"], events=events)
    image, mask = result.get("b", 0), result.get("b", 1)
    assert image.shape == (1, 2, 4, 3) and mask.shape == (1, 2, 4)
    assert torch.allclose(image[0, 0, 0], torch.tensor([0.0, 0.2, 0.0]))
    assert bool((result.get("plain", 0) == 1.0).all()) and bool((result.get("plain", 1) == 1.0).all())
    shown = {d["node"]: d["output"] for kind, d in events if kind == "executed"}
    assert shown["b"] == {"text": ["brightened by node b"]} and shown["plain"] == {"text": ["brightened by node plain"]}


def test_preview_image_writes_pngs_with_the_prompt(site):
    root, env, registry, infos, nodes = site
    prompt = {"img": {"class_type": "EmptyImage", "inputs": {"width": 3, "height": 2, "batch_size": 2,
                                                             "color": 0xFF0000}},
              "s": {"class_type": "V3Show", "inputs": {"images": ["img", 0]}}}
    result = _run(Executor(registry, env), prompt, targets=["s"])
    (entry_a, entry_b) = result.outputs["s"]["images"]
    assert result.outputs["s"]["animated"] == [False]
    assert entry_a["type"] == "temp" and entry_a["subfolder"] == ""
    assert entry_a["filename"].startswith("ComfyUI_temp_") and entry_a["filename"].endswith("_00001_.png")
    assert entry_b["filename"].endswith("_00002_.png")
    with Image.open(root / "temp" / entry_a["filename"]) as png:
        assert png.size == (3, 2) and png.getpixel((0, 0)) == (255, 0, 0)
        assert json.loads(png.text["prompt"])["s"]["class_type"] == "V3Show"


def test_multitype_widget_and_a_packs_own_type(site):
    root, env, registry, infos, nodes = site
    prompt = {"four": {"class_type": "V3Make", "inputs": {"value": 4}},
              "a": {"class_type": "V3Mix", "inputs": {"value": 2.5}},
              "b": {"class_type": "V3Mix", "inputs": {"value": ["four", 0], "thing": ["a", 0]}}}
    result = _run(Executor(registry, env), prompt, targets=["a", "b"])
    assert result.get("a", 0) == {"value": 2.5, "before": None} and result.get("a", 1) == 5.0
    assert result.get("b", 0) == {"value": 4, "before": {"value": 2.5, "before": None}} and result.get("b", 1) == 8.0
    with pytest.raises(ValidationError, match="Return type mismatch"):  # a V3_THING is no FLOAT
        validate(Workflow.from_api({**prompt, "b": {"class_type": "V3Mix", "inputs": {"value": ["a", 0]}}}),
                 registry, env, targets=["b"])


def test_lazy_switch_computes_only_the_chosen_input(site):
    root, env, registry, infos, nodes = site
    ex = Executor(registry, env)

    def prompt(select):
        return {"one": {"class_type": "V3Make", "inputs": {"value": 11}},
                "two": {"class_type": "V3Make", "inputs": {"value": 22}},
                "sw": {"class_type": "V3Switch", "inputs": {"select": select, "first": ["one", 0],
                                                           "second": ["two", 0]}}}
    del nodes.EVENTS[1:]
    assert _run(ex, prompt(False), targets=["sw"]).get("sw") == 22
    assert nodes.EVENTS[1:] == [("Make", 22)]
    assert _run(ex, prompt(True), targets=["sw"]).get("sw") == 11
    assert nodes.EVENTS[1:] == [("Make", 22), ("Make", 11)]


def test_expansion_and_its_schema_switch(site):
    root, env, registry, infos, nodes = site
    ex = Executor(registry, env)
    result = _run(ex, {"r": {"class_type": "V3Repeat", "inputs": {"value": 5, "times": 3}}})
    assert result.get("r") == 8 and sum(1 for n in result.executed if n != "r") == 3
    assert _run(ex, {"r": {"class_type": "V3Repeat", "inputs": {"value": 5, "times": 0}}}).get("r") == 5
    with pytest.raises(Exception, match="Node V3NoExpand is not expandable, but expand included in NodeOutput"):
        _run(ex, {"n": {"class_type": "V3NoExpand", "inputs": {"value": 5, "times": 1}}})


def test_list_output_per_item_calls_and_input_list(site):
    root, env, registry, infos, nodes = site
    prompt = {"r": {"class_type": "V3Range", "inputs": {"count": 4}},
              "a": {"class_type": "V3AddOne", "inputs": {"value": ["r", 0]}},
              "t": {"class_type": "V3Total", "inputs": {"values": ["a", 0]}}}
    result = _run(Executor(registry, env), prompt, targets=["r", "a", "t"])
    assert result.get("r") == [0, 1, 2, 3] and result.get("a") == [1, 2, 3, 4]
    assert (result.get("t", 0), result.get("t", 1)) == (10, "1,2,3,4")


def test_validate_inputs_owns_its_input_and_fails_per_input(site):
    root, env, registry, infos, nodes = site
    ok = Workflow.from_api({"e": {"class_type": "V3Even", "inputs": {"value": 12, "label": "x"}}})
    validate(ok, registry, env, targets=["e"])  # 12 is past max=10, but validate_inputs owns "value" (ComfyUI's rule)
    bad = Workflow.from_api({"e": {"class_type": "V3Even", "inputs": {"value": 3, "label": "x"}}})
    with pytest.raises(ValidationError) as raised:
        validate(bad, registry, env, targets=["e"])
    errors = raised.value.report.node_errors["e"]["errors"]
    assert [(e["type"], e["details"], e["extra_info"]["input_name"]) for e in errors] == [
        ("custom_validation_failed", "value - 3 is odd (node e)", "value")]


def test_fingerprint_inputs_and_not_idempotent(site):
    root, env, registry, infos, nodes = site
    ex = Executor(registry, env)
    stamp = {"s": {"class_type": "V3Stamp", "inputs": {"name": "k"}}}
    del nodes.EVENTS[1:]
    assert _run(ex, stamp).get("s") == "k@0"
    assert _run(ex, stamp).get("s") == "k@0"  # same fingerprint: cached
    nodes.VERSIONS["k"] = 7
    assert _run(ex, stamp).get("s") == "k@7"
    assert nodes.EVENTS[1:] == [("Stamp", "k"), ("Stamp", "k")]
    # two identical nodes: a not_idempotent node is not shared between them, but each is cached
    tickets = {"t1": {"class_type": "V3Ticket", "inputs": {"value": 3}},
               "t2": {"class_type": "V3Ticket", "inputs": {"value": 3}}}
    first = _run(ex, tickets)
    assert sorted(first.executed) == ["t1", "t2"] and (first.get("t1"), first.get("t2")) == (3, 3)
    assert _run(ex, tickets).executed == []


def test_block_execution_blocks_what_follows(site):
    root, env, registry, infos, nodes = site
    prompt = {"g": {"class_type": "V3Gate", "inputs": {"value": 1, "open": False}},
              "a": {"class_type": "V3AddOne", "inputs": {"value": ["g", 0]}}}
    events = []
    result = _run(Executor(registry, env), prompt, targets=["g", "a"], events=events)
    assert isinstance(result.get("g"), Blocker) and result.get("g").message == "the gate is closed"
    assert isinstance(result.get("a"), Blocker) and result.get("a").message is None  # said once, at "a"
    blocked = [d["exception_message"] for kind, d in events if kind == "execution_blocked"]
    assert blocked == ["Execution Blocked: the gate is closed"]
    opened = _run(Executor(registry, env), {**prompt, "g": {"class_type": "V3Gate", "inputs": {"value": 1}}},
                  targets=["a"])
    assert opened.get("a") == 2


def test_async_execute_combo_of_numbers_and_v1_beside_it(site):
    root, env, registry, infos, nodes = site
    prompt = {"d": {"class_type": "MappedDouble", "inputs": {"factor": 3, "value": 7}},
              "l": {"class_type": "MappedLegacy", "inputs": {"value": ["d", 0]}}}
    result = _run(Executor(registry, env), prompt, targets=["d", "l"])
    assert (result.get("d"), result.get("l")) == (21, 20)
    with pytest.raises(ValidationError, match="value_not_in_list|not in"):
        validate(Workflow.from_api({"d": {"class_type": "MappedDouble", "inputs": {"factor": 4, "value": 1}}}),
                 registry, env, targets=["d"])


REMOTE_INPUT = {"required": {"pick": ["COMBO", {"multiselect": False, "remote": {
    "route": "/mapped/choices", "refresh_button": True, "control_after_refresh": "first"}}]}}


def test_a_remote_combo_takes_what_the_frontend_fetched(site):
    root, env, registry, infos, nodes = site
    assert _json(registry["MappedRemote"].object_info(env)["input"]) == REMOTE_INPUT
    result = _run(Executor(registry, env), {"r": {"class_type": "MappedRemote", "inputs": {"pick": "chosen"}}})
    assert result.get("r") == "picked chosen"


def test_async_execute_inside_a_running_event_loop(site):
    """A front door that runs a prompt from a coroutine: the async node runs on a loop of its own."""
    import asyncio

    root, env, registry, infos, nodes = site

    async def go():
        return _run(Executor(registry, env), {"d": {"class_type": "MappedDouble", "inputs": {"factor": 2,
                                                                                         "value": 5}}})
    assert asyncio.run(go()).get("d") == 10


def test_ui_helpers_write_into_the_bound_environment(site):
    from latentgraph import comfy_compat

    root, env, registry, infos, nodes = site
    comfy_compat.bind(env=env)
    ui = comfy_compat.import_module("comfy_api.latest").ui
    mask = torch.tensor([[[0.0, 1.0, 0.5]]])  # (1, 1, 3)
    shown = ui.PreviewMask(mask).as_dict()
    (entry,) = shown["images"]
    assert shown["animated"] == (False,) and entry["type"] == "temp"
    with Image.open(root / "temp" / entry["filename"]) as png:
        assert [png.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (255, 255, 255), (127, 127, 127)]
    saved = ui.ImageSaveHelper.get_save_images_ui(torch.zeros(2, 2, 3, 3), "sub/img_%width%", None).as_dict()
    assert [dict(r) for r in saved["images"]] == [
        {"filename": "img_3_00001_.png", "subfolder": "sub", "type": "output"},
        {"filename": "img_3_00002_.png", "subfolder": "sub", "type": "output"}]
    assert (root / "output" / "sub" / "img_3_00002_.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ui.PreviewText("hi").as_dict() == {"text": ("hi",)}


@pytest.mark.parametrize("source, error", [
    ("async def comfy_entrypoint():\n    return 3\n",
     "bad declaration: comfy_entrypoint() must return a ComfyExtension, got int"),
    ("""
        from comfy_api.latest import ComfyExtension, io

        class Twice(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="Twice", inputs=[io.Int.Input("x"), io.Float.Input("x")])

            @classmethod
            def execute(cls, x):
                return io.NodeOutput()

        class Ext(ComfyExtension):
            async def get_node_list(self):
                return [Twice]

        async def comfy_entrypoint():
            return Ext()
     """, "Input ids must be unique, but ['x'] are not."),
    ("""
        from comfy_api.latest import io

        class Bare(io.ComfyNode):
            @classmethod
            def execute(cls):
                return io.NodeOutput()

        NODE_CLASS_MAPPINGS = {"Bare": Bare}
     """, "No define_schema function was defined for node class Bare."),
])
def test_bad_v3_packs_are_reported(tmp_path, source, error):
    pack = tmp_path / "nodes_dir" / "bad_v3"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent(source))
    registry = create_registry()
    (info,) = load_plugins(registry, [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "failed" and error in info.error and "Twice" not in registry and "Bare" not in registry


def test_the_layer_provides_the_v3_names():
    from latentgraph import comfy_compat

    for name in ("comfy_api.latest.io.ComfyNode", "comfy_api.latest.io.Schema", "comfy_api.latest.io.NodeOutput",
                 "comfy_api.latest.io.Custom", "comfy_api.latest.io.Hidden.unique_id", "comfy_api.latest.ComfyExtension",
                 "comfy_api.latest.ui.PreviewImage", "comfy_api.latest.ui.PreviewText", "comfy_api.v0_0_2.io.Int"):
        assert comfy_compat.provides(name), name
    for name in ("comfy_api.latest.io.MatchType", "comfy_api.latest.ui.PreviewAudio", "comfy_api.feature_flags"):
        assert not comfy_compat.provides(name), name


def test_a_v3_name_the_layer_lacks_is_reported(tmp_path):
    pack = tmp_path / "nodes_dir" / "wants_the_api"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text("from comfy_api.latest import ComfyAPISync\nNODE_CLASS_MAPPINGS = {}\n")
    (info,) = load_plugins(create_registry(), [tmp_path / "nodes_dir"], entry_points=False)
    assert (info.status, info.needs) == ("needs ComfyUI", "comfy_api.latest.ComfyAPISync")
