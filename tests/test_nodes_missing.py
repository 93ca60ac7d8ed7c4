"""`latentgraph nodes --missing`: ComfyUI 0.3.64's core nodes we lack, each with its reason.

The counts come from the shipped data and the live registry (other nodes are being added), so no
test hard-codes today's missing count.
"""
import json

import pytest

from latentgraph import cli
from latentgraph.missing_nodes import (API, OUT_OF_SCOPE, OUT_OF_SCOPE_MODULES, REASONS, TODO, classify,
                                       core_nodes, format_report, missing_nodes, report)
from latentgraph.nodes import create_registry


@pytest.fixture(scope="module")
def ours():
    return set(create_registry().names())


def test_core_list_is_comfyui_0364_without_custom_nodes():
    core = core_nodes()
    names = [n["name"] for n in core["nodes"]]
    assert core["source"]["comfyui_commit"] == "a125cd84b054a57729b5eecab930ca9408719832"
    assert core["count"] == len(names) == len(set(names)) == 495
    modules = {n["module"].split(".")[0] for n in core["nodes"]}
    assert modules == {"nodes", "comfy_extras", "comfy_api_nodes"}
    assert sum(n["module"] == "nodes" for n in core["nodes"]) == 64
    assert sum(n["module"].startswith("comfy_api_nodes.") for n in core["nodes"]) == 113
    ksampler = next(n for n in core["nodes"] if n["name"] == "KSampler")
    assert ksampler == {"name": "KSampler", "module": "nodes", "category": "sampling"}


def test_counts_add_up_and_nothing_we_have_is_listed(ours):
    doc = report(ours)
    core_names = {n["name"] for n in core_nodes()["nodes"]}
    listed = {n["name"] for n in doc["nodes"]}
    assert not listed & ours
    assert listed == core_names - ours
    assert doc["have"] == len(core_names & ours)
    assert doc["have"] + sum(doc["missing"].values()) == doc["core"] == 495
    assert list(doc["missing"]) == list(REASONS)
    for reason in REASONS:
        assert doc["missing"][reason] == sum(n["reason"] == reason for n in doc["nodes"])
    # every API node is missing (we run no cloud services), so that count is fixed by the data
    assert doc["missing"][API] == 113


def test_known_nodes_get_their_reasons(ours):
    by_name = {m.name: m for m in missing_nodes(ours)}
    assert "KSampler" not in by_name and "SamplerCustomAdvanced" not in by_name
    assert (by_name["FluxGuidance"].reason, by_name["FluxGuidance"].why) == (OUT_OF_SCOPE, "DiT (Flux)")
    assert (by_name["WanImageToVideo"].reason, by_name["WanImageToVideo"].why) == (OUT_OF_SCOPE, "video (WAN)")
    assert by_name["ModelSamplingSD3"].why == "DiT model sampling"
    assert by_name["ModelMergeFlux1"].why == "DiT model merging"
    assert (by_name["OpenAIDalle3"].reason, by_name["OpenAIDalle3"].why) == (API, "cloud service openai")
    assert (by_name["PhotoMakerLoader"].reason, by_name["PhotoMakerLoader"].why) == (TODO, "")
    assert by_name["PhotoMakerLoader"].module == "comfy_extras.nodes_photomaker"


def test_rules_in_order():
    # the API prefix wins over a media category
    assert classify("X", "comfy_api_nodes.nodes_kling", "api node/video/Kling") == (API, "cloud service kling")
    assert classify("X", "comfy_extras.nodes_sd3", "latent") == (OUT_OF_SCOPE, "DiT (SD3)")
    # a node of a module we have not listed, under a media category
    assert classify("X", "comfy_extras.nodes_new", "latent/video/foo") == (OUT_OF_SCOPE, "video")
    assert classify("X", "comfy_extras.nodes_new", "conditioning/3d_models") == (OUT_OF_SCOPE, "3D")
    # "videos" is not the segment "video"; an SD node of a DiT-merging module stays to do
    assert classify("X", "comfy_extras.nodes_new", "image/videos") == (TODO, "")
    assert classify("ModelMergeSDXL", "comfy_extras.nodes_model_merging_model_specific", "advanced") == (TODO, "")
    assert all(m.startswith("comfy_extras.") for m in OUT_OF_SCOPE_MODULES)


def test_having_a_node_removes_it_from_the_list(ours):
    before = report(ours)
    after = report(ours | {"PhotoMakerLoader", "NotAComfyNode"})
    assert after["have"] == before["have"] + 1
    assert after["missing"][TODO] == before["missing"][TODO] - 1
    assert "PhotoMakerLoader" not in {n["name"] for n in after["nodes"]}


def test_report_on_a_small_core_list():
    core = {"source": {"comfyui_version": "9.9"}, "count": 4, "nodes": [
        {"name": "A", "module": "nodes", "category": "latent"},
        {"name": "B", "module": "comfy_api_nodes.nodes_x", "category": "api node"},
        {"name": "C", "module": "comfy_extras.nodes_flux", "category": "x"},
        {"name": "D", "module": "nodes", "category": "y"}]}
    doc = report({"D"}, core)
    assert doc["missing"] == {TODO: 1, OUT_OF_SCOPE: 1, API: 1} and doc["have"] == 1
    assert [n["name"] for n in doc["nodes"]] == ["A", "C", "B"]  # to do, out of scope, api
    assert format_report(doc) == (
        "name  module                   reason\n"
        "A     nodes                    to do\n"
        "C     comfy_extras.nodes_flux  out of scope: DiT (Flux)\n"
        "B     comfy_api_nodes.nodes_x  api: cloud service x\n"
        "ComfyUI 9.9 core: 4 nodes; latentgraph has 1; missing 3: 1 to do, 1 out of scope, 1 api\n")


def test_cli_table_and_json(capsys, ours):
    doc = report(ours)
    assert cli.main(["nodes", "--missing", "--no-plugins"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "module", "reason"]
    assert len(lines) == 2 + sum(doc["missing"].values())
    m = doc["missing"]
    assert lines[-1] == (f"ComfyUI 0.3.64 core: 495 nodes; latentgraph has {doc['have']}; missing "
                         f"{495 - doc['have']}: {m[TODO]} to do, {m[OUT_OF_SCOPE]} out of scope, {m[API]} api")
    assert cli.main(["nodes", "--missing", "--json", "--no-plugins"]) == 0
    assert json.loads(capsys.readouterr().out) == doc


def test_every_sampler_node_of_comfyui_is_here(ours):
    """ComfyUI 0.3.64's custom-sampling and advanced-sampler modules: none left (SamplerLCMUpscale
    was the last one)."""
    modules = {"comfy_extras.nodes_custom_sampler", "comfy_extras.nodes_advanced_samplers"}
    theirs = {n["name"] for n in core_nodes()["nodes"] if n["module"] in modules}
    assert len(theirs) == 35 and {"SamplerLCMUpscale", "SamplerEulerCFGpp", "SamplerCustomAdvanced"} <= theirs
    assert theirs <= ours
