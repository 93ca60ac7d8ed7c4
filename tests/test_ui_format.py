"""UI-format workflows (ComfyUI's Save button) become the API prompt ComfyUI's own frontend
makes of them: the sixteen real workflow files in tests/fixtures/comfy_workflows (templates and
six ComfyUI_examples PNGs' workflows), whose .api.json was produced by ComfyUI 0.3.64's frontend
(see that folder's README)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest

from latentgraph.graph import Boolean, Combo, Float, Int, NodeRegistry, String, node
from latentgraph.graph.errors import WorkflowError
from latentgraph.graph.ui_format import FRONTEND_ONLY, is_ui_workflow, map_widgets, ui_to_api
from latentgraph.nodes import create_registry

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_workflows"
NAMES = sorted(p.name[: -len(".ui.json")] for p in FIXTURES.glob("*.ui.json"))


def meaning(prompt: dict) -> dict:
    """What a prompt means: no _meta, numbers as floats, links as [str, int]."""
    def norm(v):
        if isinstance(v, bool) or isinstance(v, str) or v is None:
            return v
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int):
            return ["link", str(v[0]), v[1]]
        return v
    return {str(k): (n["class_type"], {i: norm(x) for i, x in n["inputs"].items()}) for k, n in prompt.items()}


@pytest.fixture(scope="module")
def registry():
    return create_registry()


def test_there_are_eighteen_fixtures():
    assert NAMES == ["2_pass_pose_worship", "controlnet_example", "default", "depth_controlnet",
                     "esrgan_example", "example_depth_t2i_adapter", "gligen_textbox_example",
                     "hiresfix_esrgan_workflow", "image2image",
                     "image_sdxl_simple", "inpaint_example", "lora", "mixing_controlnets",
                     "sdxl_revision_text_prompts", "sdxl_revision_zero_positive", "sdxl_simple_example",
                     "sdxlturbo_example", "unclip_example"]


# Node classes some fixtures use that land in their own commits (CLIP vision, unCLIP): until they
# are registered those fixtures are reported as xfail; once they are, they are compared like the rest.
PENDING = {"sdxl_revision_text_prompts": "CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning",
           "sdxl_revision_zero_positive": "CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning",
           "unclip_example": "unCLIPCheckpointLoader, CLIPVisionEncode, unCLIPConditioning"}


def lacking_classes(registry, name: str) -> set[str]:
    kinds = {n["type"] for n in json.loads((FIXTURES / f"{name}.ui.json").read_text())["nodes"]}
    return {k for k in kinds if registry.get(k) is None and k not in FRONTEND_ONLY}


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_converts_to_what_comfyuis_frontend_made(registry, name):
    lacking = lacking_classes(registry, name)
    if lacking and lacking <= set(PENDING.get(name, "").split(", ")):
        pytest.xfail(f"{', '.join(sorted(lacking))} not registered yet")
    ui = json.loads((FIXTURES / f"{name}.ui.json").read_text())
    want = json.loads((FIXTURES / f"{name}.api.json").read_text())
    assert is_ui_workflow(ui) and not is_ui_workflow(want)
    got = ui_to_api(ui, registry, source=f"{name}.ui.json")
    assert meaning(got) == meaning(want)
    assert all(got[k]["_meta"]["title"] for k in got)


def test_bypassed_lora_is_wired_through_and_primitives_are_copied(registry):
    lora = ui_to_api(json.loads((FIXTURES / "lora.ui.json").read_text()), registry)
    assert "13" not in lora and lora["3"]["inputs"]["model"] == ["11", 0]
    sdxl = ui_to_api(json.loads((FIXTURES / "sdxl_simple_example.ui.json").read_text()), registry)
    steps = sorted(n["inputs"]["steps"] for n in sdxl.values() if n["class_type"] == "KSamplerAdvanced")
    assert steps == [25, 25]


def test_widget_values_skip_control_and_upload_values(registry):
    ks = registry.get("KSampler")
    assert map_widgets(ks, [42, "randomize", 20, 7.5, "euler", "normal", 1.0]) == {
        "seed": 42, "steps": 20, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    assert map_widgets(ks, [42, 20, 7.5, "euler", "normal", 1.0])["steps"] == 20  # no control value saved
    assert map_widgets(ks, {"seed": 5, "cfg": 2.0, "other": 1}) == {"seed": 5, "cfg": 2.0}
    assert map_widgets(registry.get("LoadImage"), ["a.png", "image"]) == {"image": "a.png"}
    assert map_widgets(ks, [1, "fixed", 2, 3.0, "euler", "normal", 1.0, "extra", "more"])["denoise"] == 1.0


def test_muted_nodes_notes_and_unreachable_nodes_are_dropped(registry):
    ui = json.loads((FIXTURES / "default.ui.json").read_text())
    save = next(n for n in ui["nodes"] if n["type"] == "SaveImage")
    save["mode"] = 2
    assert ui_to_api(ui, registry) == {}  # nothing reaches an output any more


def test_refusals_name_the_file(registry):
    with pytest.raises(WorkflowError, match="x.json.*not a UI-format"):
        ui_to_api({"1": {}}, registry, source="x.json")
    with pytest.raises(WorkflowError, match="group nodes"):
        ui_to_api({"nodes": [], "links": [], "extra": {"groupNodes": {"g": {}}}}, registry, source="g.json")


def test_entry_points_take_ui_json_and_png_workflow_chunks(registry, tmp_path, capsys):
    from PIL import Image, PngImagePlugin

    from latentgraph.cli import main
    from latentgraph.graph import Workflow

    ui_path = FIXTURES / "default.ui.json"
    want = json.loads((FIXTURES / "default.api.json").read_text())
    wf = Workflow.load(ui_path, registry)
    assert wf.origin == "ui" and meaning(wf.to_api(registry)) == meaning(want)
    assert wf.extra["extra_pnginfo"]["workflow"]["nodes"]  # kept for SaveImage, as the frontend sends it
    with pytest.raises(WorkflowError, match="needs the node registry"):
        Workflow.load(ui_path)
    # the CLI converts it
    out = tmp_path / "default.api.json"
    assert main(["convert", str(ui_path), "--to", "api", "-o", str(out)]) == 0
    assert meaning(json.loads(out.read_text())) == meaning(want)
    # a PNG that carries only ComfyUI's `workflow` chunk
    info = PngImagePlugin.PngInfo()
    info.add_text("workflow", ui_path.read_text())
    Image.new("RGB", (4, 4)).save(tmp_path / "shared.png", pnginfo=info)
    png = Workflow.load(tmp_path / "shared.png", registry)
    assert png.origin == "png" and meaning(png.to_api(registry)) == meaning(want)
    # ComfyUI's SaveImage writes both: `prompt` (the API prompt) and `workflow` (the UI graph)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(want))
    info.add_text("workflow", ui_path.read_text())
    Image.new("RGB", (4, 4)).save(tmp_path / "comfy.png", pnginfo=info)
    both = Workflow.load(tmp_path / "comfy.png", registry)
    assert meaning(both.to_api(registry)) == meaning(want)
    assert both.extra["extra_pnginfo"]["workflow"] == json.loads(ui_path.read_text())
    out = tmp_path / "from_png.yaml"
    assert main(["convert", str(tmp_path / "comfy.png"), "--to", "yaml", "-o", str(out)]) == 0
    assert meaning(Workflow.load(out).to_api(registry)) == meaning(want)
    # validate reads it and reports the missing checkpoint by node and input
    assert main(["validate", str(ui_path), "--models-dir", str(tmp_path / "models")]) == 1
    assert "ckpt_name" in capsys.readouterr().err


def test_a_seed_without_the_flag_still_has_a_control_value():
    """The frontend gives any INT named seed or noise_seed a control widget unless told otherwise
    (plugins written for ComfyUI rarely set control_after_generate)."""
    @node(outputs=["INT"])
    def Seeded(seed: Annotated[int, Int(0)], steps: Annotated[int, Int(1)]) -> int:
        return seed + steps

    @node(outputs=["INT"])
    def NoControl(seed: Annotated[int, Int(0, extra={"control_after_generate": False})],
                  steps: Annotated[int, Int(1)]) -> int:
        return seed + steps

    reg = NodeRegistry()
    reg.register(Seeded)
    reg.register(NoControl)
    assert map_widgets(reg["Seeded"], [5, "fixed", 9]) == {"seed": 5, "steps": 9}
    assert map_widgets(reg["NoControl"], [5, 9]) == {"seed": 5, "steps": 9}


def test_only_the_pending_classes_may_be_missing(registry):
    """Only the classes PENDING names may be absent: any other is a failure, not an xfail."""
    for name in NAMES:
        assert lacking_classes(registry, name) <= set(PENDING.get(name, "").split(", ")), name


def test_a_2023_workflow_keeps_its_boolean_control_value_out_of_the_inputs(registry):
    """ComfyUI_examples' unCLIP PNG (saved in 2023) stores the seed's control as a bool: true."""
    ui = json.loads((FIXTURES / "unclip_example.ui.json").read_text())
    want = json.loads((FIXTURES / "unclip_example.api.json").read_text())
    sampler = next(n for n in ui["nodes"] if n["type"] == "KSampler")
    assert sampler["widgets_values"][1] is True
    got = ui_to_api(ui, registry, source="unclip_example.ui.json")
    assert meaning({"3": got["3"]}) == meaning({"3": want["3"]})
    assert got["3"]["inputs"]["steps"] == 26 and got["3"]["inputs"]["sampler_name"] == "uni_pc_bh2"
    ks = registry.get("KSampler")
    assert map_widgets(ks, [7, False, 3, 2.0, "euler", "karras", 0.5]) == {
        "seed": 7, "steps": 3, "cfg": 2.0, "sampler_name": "euler", "scheduler": "karras", "denoise": 0.5}


def test_widgets_without_a_saved_value_take_their_defaults():
    """The frontend puts saved values into widgets in order; the rest keep the value they were made
    with: the declared default, else a combo's first choice (unCLIP's CLIPVisionEncode has no
    widgets_values at all and its prompt holds crop: "center")."""
    @node(outputs=["INT"])
    def Widgets(mode: Annotated[str, Combo(["center", "none"])], steps: Annotated[int, Int(20)],
                scale: Annotated[float, Float(1.5)], text: Annotated[str, String()]) -> int:
        return 0

    @node(outputs=["INT"])
    def SeedThenFlag(seed: Annotated[int, Int(0)], flag: Annotated[bool, Boolean(False)]) -> int:
        return 0

    reg = NodeRegistry()
    reg.register(Widgets)
    reg.register(SeedThenFlag)
    # a widget with no declared default is left out: validation names it as missing
    assert map_widgets(reg["Widgets"], None) == {"mode": "center", "steps": 20, "scale": 1.5}
    assert map_widgets(reg["Widgets"], ["none", 3]) == {"mode": "none", "steps": 3, "scale": 1.5}
    assert map_widgets(reg["Widgets"], ["none", 3, 2.0, "hi"]) == {
        "mode": "none", "steps": 3, "scale": 2.0, "text": "hi"}
    # a bool after a seed is its control value, unless the next widget is a BOOLEAN itself
    assert map_widgets(reg["SeedThenFlag"], [4, True]) == {"seed": 4, "flag": True}
    assert map_widgets(reg["SeedThenFlag"], [4, "fixed", True]) == {"seed": 4, "flag": True}
