"""Canny: edges bit-exact against ComfyUI 0.3.64's Canny node (kornia 0.9.0 on both sides) at
two threshold pairs, through the executor from LoadImage as a workflow runs it; its declaration
against /object_info; clear errors for bad thresholds, channels and sizes
(tests/fixtures/comfy_reference/canny/README.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from latentgraph.graph import Environment, Executor, NodeExecutionError, Workflow
from latentgraph.nodes import create_registry
from latentgraph.nodes.preprocessors import Canny
from conftest import FIXTURES

HERE = FIXTURES / "comfy_reference" / "canny"


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("canny")
    (root / "in").mkdir()
    shutil.copy(HERE / "canny_input.png", root / "in")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def _edges(executor, low: float, high: float) -> torch.Tensor:
    wf = Workflow()
    wf.add("load", "LoadImage", image="canny_input.png")
    wf.add("canny", "Canny", image="load.IMAGE", low_threshold=low, high_threshold=high)
    return executor.run(wf, targets=["canny"]).get("canny")


@pytest.mark.parametrize("name, low, high, white", [("default", 0.4, 0.8, 88), ("low", 0.05, 0.2, 168)])
def test_edges_are_comfyuis_bit_for_bit(executor, name, low, high, white):
    """ComfyUI saved its IMAGE as an 8-bit PNG; edges are exactly 0 or 1, so the PNG holds them exactly."""
    out = _edges(executor, low, high)
    ref = torch.from_numpy(np.asarray(Image.open(HERE / f"canny_ref_{name}.png")).astype(np.float32) / 255.0)
    assert out.shape == (1, 40, 56, 3) and out.dtype == torch.float32
    assert torch.equal(out[0], ref)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert int(out[0, :, :, 0].sum()) == white  # edge pixels: the two settings differ, neither is empty
    assert torch.equal(out[..., 0], out[..., 2])  # grey edges repeated into R, G and B


def test_batch_is_edged_image_by_image():
    img = torch.from_numpy(np.asarray(Image.open(HERE / "canny_input.png")).astype(np.float32) / 255.0)[None]
    one = Canny(img, 0.4, 0.8)
    two = Canny(torch.cat([img, img.flip(2)]), 0.4, 0.8)
    assert torch.equal(two[:1], one)
    assert torch.equal(two[1:], Canny(img.flip(2), 0.4, 0.8))
    assert not torch.equal(two[1:], one)


def test_low_above_high_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^Canny: low_threshold \(0\.9\) must not be greater than "
                                         r"high_threshold \(0\.5\)$"):
        Canny(torch.zeros(1, 8, 8, 3), 0.9, 0.5)


def test_four_channel_image_is_refused():
    with pytest.raises(ValueError, match=r"^Canny: image has 4 channels; it takes 3 \(RGB\) or 1 \(grey\)$"):
        Canny(torch.zeros(1, 8, 8, 4), 0.4, 0.8)


def test_working_maps_are_budgeted_before_kornia_allocates():
    # a view of one pixel: 4 x 16384 x 16384 claimed, nothing allocated
    huge = torch.zeros(1, 1, 1, 3).expand(4, 16384, 16384, 3)
    with pytest.raises(ValueError) as info:
        Canny(huge, 0.4, 0.8)
    assert str(info.value) == ("image of batch 4 x 16384 x 16384 makes Canny's working maps of 48 GiB, "
                               "which exceeds the limit tensor_bytes = 8 GiB")


def test_errors_name_the_node_through_the_executor(executor):
    wf = Workflow()
    wf.add("load", "LoadImage", image="canny_input.png")
    wf.add("edges", "Canny", image="load.IMAGE", low_threshold=0.9, high_threshold=0.5)
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["edges"])
    assert info.value.format() == ("node 'edges' (Canny) failed: ValueError: Canny: low_threshold (0.9) must "
                                   "not be greater than high_threshold (0.5)")


def test_declaration_matches_comfyui_object_info():
    theirs = json.loads((HERE / "object_info.json").read_text())["Canny"]
    ours = create_registry().object_info()["Canny"]
    for key in ("input_order", "output", "output_name", "output_is_list", "python_module", "category",
                "output_node"):
        assert ours[key] == theirs[key], key
    assert ours["input"]["required"]["image"][0] == "IMAGE"
    for name in ("low_threshold", "high_threshold"):
        assert ours["input"]["required"][name] == theirs["input"]["required"][name], name


def test_the_edges_feed_the_next_node_as_an_image(executor):
    """The output is the IMAGE itself: a node after Canny (here ImageInvert) gets a tensor."""
    wf = Workflow()
    wf.add("load", "LoadImage", image="canny_input.png")
    wf.add("canny", "Canny", image="load.IMAGE", low_threshold=0.4, high_threshold=0.8)
    wf.add("invert", "ImageInvert", image="canny.IMAGE")
    result = executor.run(wf, targets=["canny", "invert"])
    edges, inverted = result.get("canny"), result.get("invert")
    assert isinstance(edges, torch.Tensor) and inverted.shape == (1, 40, 56, 3)
    assert torch.equal(inverted, 1.0 - edges)
