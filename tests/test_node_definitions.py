"""The nodes of issue 15 as ComfyUI 0.3.64 declares them (its /object_info, committed in
tests/fixtures/comfy_reference/object_info_issue15.json): input names and order, types,
defaults, ranges, combo options, outputs, category and flags. A workflow made in ComfyUI then
validates here with the same values, and ComfyUI's frontend draws the same widgets.

Where latentgraph deliberately differs the difference is listed in ALLOWED with its reason."""

from __future__ import annotations

import json

import pytest

from latentgraph.cli import main as cli_main
from latentgraph.graph import Environment
from latentgraph.nodes import create_registry
from conftest import FIXTURES

FIXTURE = json.loads((FIXTURES / "comfy_reference" / "object_info_issue15.json").read_text())
# every committed excerpt is checked the same way: issue 15's and the later ones (object_info_<area>.json)
THEIRS: dict[str, dict] = {name: spec for path in sorted((FIXTURES / "comfy_reference").glob("object_info_*.json"))
                           for name, spec in json.loads(path.read_text())["nodes"].items()}

# Nodes of the issue that other work in progress registers; the lead removes a name when it lands
# (test_the_missing_nodes_are_exactly_not_yet fails until then, so none is skipped silently).
NOT_YET: set[str] = set()

# (node, field) -> why latentgraph's value differs from ComfyUI's on purpose. A field listed here
# is not compared for that node; "*" stands for every node.
ALLOWED = {
    ("*", "description"): "latentgraph describes every node (its docstring); ComfyUI's V1 nodes send ''",
    ("*", "output_tooltips"): "ComfyUI's V3 nodes send [null, ...] for outputs without a tooltip; "
                              "latentgraph sends none",
}

# Flags of ComfyUI's V3 schema; a V1 node (and latentgraph, when unset) leaves them out: false.
FLAGS = ("deprecated", "experimental", "api_node", "output_node")
COMPARED = ("category", "display_name", "python_module", "output", "output_name", "output_is_list")


def _allowed(name: str, field: str) -> bool:
    return (name, field) in ALLOWED or ("*", field) in ALLOWED


def normalise(spec: list) -> tuple:
    """One input's entry, written as ComfyUI's frontend reads it, as (type, options):
    ``["COMBO", {"options": [...]}]`` (V3) and ``[[...]]`` (V1) are the same combo; a combo's
    default is its first option unless it names one; ``{}`` is no options at all."""
    kind, options = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if kind == "COMBO":
        kind = options.pop("options")
        if options.get("multiselect") is False:
            del options["multiselect"]
    if isinstance(kind, list):
        options.setdefault("default", kind[0] if kind else None)
        kind = ["COMBO", *kind]
    return kind, options


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Model folders that each hold one file named after the folder, so a file combo shows
    which folder its node lists."""
    models = tmp_path_factory.mktemp("models")
    for kind in _file_combos().values():
        (models / kind).mkdir(exist_ok=True)
        (models / kind / f"probe_{kind}.safetensors").write_bytes(b"")
    return models


@pytest.fixture(scope="module")
def ours(models) -> dict[str, dict]:
    """latentgraph's /object_info, as the server sends it."""
    env = Environment(models_dir=models, input_dir=models / "input", device="cpu")
    return create_registry().object_info(env)


def _file_combos() -> dict[tuple[str, str], str]:
    """(node, input) -> model folder, for the combos that list files."""
    return {(name, inp): spec[0]["model_folder"]
            for name, node in THEIRS.items() for group in node["input"].values()
            for inp, spec in group.items() if isinstance(spec[0], dict)}


def test_the_fixture_holds_the_nodes_of_the_issue():
    assert len(FIXTURE["nodes"]) == 24
    custom = json.loads((FIXTURES / "comfy_reference" / "object_info_custom_sampling.json").read_text())["nodes"]
    assert len(custom) == 31 and set(custom) <= set(THEIRS)
    assert _file_combos() == {
        ("ControlNetLoader", "control_net_name"): "controlnet",
        ("DiffControlNetLoader", "control_net_name"): "controlnet",
        ("GLIGENLoader", "gligen_name"): "gligen",
        ("CLIPVisionLoader", "clip_name"): "clip_vision",
        ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
        ("StyleModelLoader", "style_model_name"): "style_models",
        ("UNETLoader", "unet_name"): "diffusion_models",
        ("CLIPLoader", "clip_name"): "text_encoders",
        ("DualCLIPLoader", "clip_name1"): "text_encoders",
        ("DualCLIPLoader", "clip_name2"): "text_encoders",
        ("LoraLoader", "lora_name"): "loras",
        ("LoraLoaderModelOnly", "lora_name"): "loras",
        ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    }


def test_the_missing_nodes_are_exactly_not_yet(ours):
    assert {name for name in THEIRS if name not in ours} == NOT_YET


def test_normalise_reads_both_combo_shapes_and_empty_options():
    v3 = ["COMBO", {"multiselect": False, "options": ["a", "b"]}]
    assert normalise(v3) == normalise([["a", "b"]]) == normalise([["a", "b"], {"default": "a"}])
    assert normalise([["a", "b"], {"default": "b"}]) != normalise([["a", "b"]])
    assert normalise(["MODEL", {}]) == normalise(["MODEL"]) == ("MODEL", {})
    assert normalise(["FLOAT", {"default": 1.0}]) != normalise(["FLOAT", {"default": 1.1}])


@pytest.mark.parametrize("name", sorted(set(THEIRS) - NOT_YET))
def test_node_is_declared_as_in_comfyui(name, ours):
    theirs, mine = THEIRS[name], ours[name]
    for field in COMPARED:
        if _allowed(name, field):
            continue
        expected = theirs[field]
        if field == "display_name" and expected is None:
            expected = name  # a V3 node without one is shown under its name
        assert mine[field] == expected, f"{name}.{field}"
    for flag in FLAGS:
        assert bool(mine.get(flag)) == bool(theirs.get(flag)), f"{name}.{flag}"
    for group in ("required", "optional"):
        assert mine["input_order"].get(group, []) == theirs["input_order"].get(group, []), f"{name} {group}"
        for inp, spec in theirs["input"].get(group, {}).items():
            folder = _file_combos().get((name, inp))
            if folder is not None:
                # the file list is each side's own folder: ours must list the same folder
                assert f"probe_{folder}.safetensors" in mine["input"][group][inp][0], f"{name}.{inp}"
            else:
                assert normalise(mine["input"][group][inp]) == normalise(spec), f"{name}.{inp}"


def test_latentgraph_nodes_lists_the_same_definitions(models, ours, capsys):
    """`latentgraph nodes --json` is the document the node test above checks, and the plain
    listing names every node of the issue with its inputs."""
    args = ["nodes", "--models-dir", str(models), "--input-dir", str(models / "input")]
    assert cli_main([*args, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    registered = sorted(set(THEIRS) - NOT_YET)
    assert {name: listed[name] for name in registered} == {name: ours[name] for name in registered}
    assert cli_main(args) == 0
    lines = {line.strip().split("(", 1)[0]: line.strip() for line in capsys.readouterr().out.splitlines()}
    assert all(name in lines for name in registered)
    assert lines["ControlNetApplyAdvanced"] == (
        "ControlNetApplyAdvanced(positive: CONDITIONING, negative: CONDITIONING, control_net: CONTROL_NET, "
        "image: IMAGE, strength: FLOAT, start_percent: FLOAT, end_percent: FLOAT, vae?: VAE) -> positive, negative")
