"""The latent nodes: ComfyUI's schema, values on small latents with known answers, the LATENT
dict's bookkeeping (batch_index, noise_mask, other keys), and runs through the executor."""

from __future__ import annotations

import math

import pytest
import torch

import latentgraph.nodes.latent
from latentgraph.graph import Executor, Workflow
from latentgraph.nodes import create_registry
from latentgraph.nodes.latent import (EmptyLatentImage, LatentComposite, LatentFromBatch, LatentUpscale,
                                      LatentUpscaleBy, RepeatLatentBatch, SetLatentNoiseMask, bislerp)

METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]


@pytest.fixture(scope="module")
def registry():
    reg = create_registry()
    if "EmptyLatentImage" not in reg:
        reg.register_module(latentgraph.nodes.latent, python_module="nodes")
    return reg


def _int(default, lo, hi, step=None):
    opts = {"default": default, "min": lo, "max": hi}
    return ["INT", opts | ({"step": step} if step is not None else {})]


# Each node's inputs as ComfyUI's /object_info lists them (combos with their first choice as
# default, as all latentgraph combos), its category, display name and outputs.
SPECS = {
    "EmptyLatentImage": ("latent", "Empty Latent Image", {
        "width": _int(512, 16, 16384, 8), "height": _int(512, 16, 16384, 8), "batch_size": _int(1, 1, 4096)}),
    "LatentUpscale": ("latent", "Upscale Latent", {
        "samples": ["LATENT"], "upscale_method": [METHODS, {"default": "nearest-exact"}],
        "width": _int(512, 0, 16384, 8), "height": _int(512, 0, 16384, 8),
        "crop": [["disabled", "center"], {"default": "disabled"}]}),
    "LatentUpscaleBy": ("latent", "Upscale Latent By", {
        "samples": ["LATENT"], "upscale_method": [METHODS, {"default": "nearest-exact"}],
        "scale_by": ["FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}]}),
    "LatentFromBatch": ("latent/batch", "Latent From Batch", {
        "samples": ["LATENT"], "batch_index": _int(0, 0, 63), "length": _int(1, 1, 64)}),
    "RepeatLatentBatch": ("latent/batch", "Repeat Latent Batch", {
        "samples": ["LATENT"], "amount": _int(1, 1, 64)}),
    "LatentComposite": ("latent", "Latent Composite", {
        "samples_to": ["LATENT"], "samples_from": ["LATENT"], "x": _int(0, 0, 16384, 8),
        "y": _int(0, 0, 16384, 8), "feather": _int(0, 0, 16384, 8)}),
    "SetLatentNoiseMask": ("latent/inpaint", "Set Latent Noise Mask", {"samples": ["LATENT"], "mask": ["MASK"]}),
}


@pytest.mark.parametrize("name", SPECS)
def test_object_info_matches_comfyui(registry, name):
    category, display, inputs = SPECS[name]
    info = registry.object_info()[name]
    assert info["category"] == category and info["display_name"] == display
    assert info["output"] == ["LATENT"] and info["output_name"] == ["LATENT"] and info["python_module"] == "nodes"
    assert info["input_order"] == {"required": list(inputs)}
    got = {k: [v[0], {o: x for o, x in v[1].items() if o != "tooltip"}] if len(v) > 1 else v
           for k, v in info["input"]["required"].items()}
    assert got == inputs
    if name == "EmptyLatentImage":
        assert info["output_tooltips"] == ["The empty latent image batch."]
        assert info["input"]["required"]["width"][1]["tooltip"] == "The width of the latent images in pixels."


def _latent(b=2, h=4, w=6, **extra) -> dict:
    return {"samples": torch.arange(b * 4 * h * w, dtype=torch.float32).reshape(b, 4, h, w), **extra}


def test_empty_latent_is_zeros_at_an_eighth():
    out = EmptyLatentImage(width=72, height=40, batch_size=3)
    assert set(out) == {"samples"} and out["samples"].shape == (3, 4, 5, 9) and out["samples"].eq(0).all()


def test_upscale_sizes_keep_aspect_and_floor_at_64():
    lat = _latent(h=4, w=8, extra="kept")
    assert LatentUpscale(samples=lat, upscale_method="bilinear", width=128, height=0, crop="disabled")[
        "samples"].shape[-2:] == (8, 16)
    assert LatentUpscale(samples=lat, upscale_method="area", width=0, height=128, crop="disabled")[
        "samples"].shape[-2:] == (16, 32)
    small = LatentUpscale(samples=lat, upscale_method="nearest-exact", width=16, height=8, crop="disabled")
    assert small["samples"].shape[-2:] == (8, 8) and small["extra"] == "kept"  # 64 pixels at least
    same = LatentUpscale(samples=lat, upscale_method="bicubic", width=0, height=0, crop="center")
    assert same["samples"] is lat["samples"] and same is not lat


def test_upscale_nearest_doubles_each_latent_pixel_and_leaves_the_input_alone():
    lat = _latent(b=1, h=4, w=5, noise_mask=torch.ones(1, 1, 32, 40))
    before = {k: v.clone() for k, v in lat.items()}
    out = LatentUpscale(samples=lat, upscale_method="nearest-exact", width=80, height=64, crop="disabled")
    x = lat["samples"]
    assert torch.equal(out["samples"], x.repeat_interleave(2, -1).repeat_interleave(2, -2))
    assert out["noise_mask"] is lat["noise_mask"]  # masks are resized when sampled, as in ComfyUI
    assert all(torch.equal(lat[k], v) for k, v in before.items()) and set(lat) == {"samples", "noise_mask"}


def test_upscale_by_rounds_the_latent_size():
    lat = _latent(h=5, w=7)
    for method in METHODS:
        out = LatentUpscaleBy(samples=lat, upscale_method=method, scale_by=1.5)
        assert out["samples"].shape == (2, 4, round(5 * 1.5), round(7 * 1.5)), method


def test_bislerp_slerps_between_orthogonal_neighbours():
    # Two pixels, e1 and e2, to width 4: bilinear places the outputs at 0, 0.25, 0.75 and 1.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # (B, C, H, W): pixel 0 = e1
    out = bislerp(x, 4, 1)[0, :, 0].T  # (4 positions, 2 channels)
    a, b = math.pi / 8, 3 * math.pi / 8
    expected = torch.tensor([[1.0, 0.0], [math.cos(a), math.sin(a)], [math.cos(b), math.sin(b)], [0.0, 1.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-6)  # lengths interpolate, 1 here


def test_bislerp_edge_cases():
    flat = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1).expand(2, 4, 3, 5)
    assert torch.equal(bislerp(flat, 9, 7), flat[:, :, :1, :1].expand(2, 4, 7, 9))  # parallel: first one
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 2)
    assert torch.allclose(bislerp(opposite, 4, 1)[0, 0, 0], torch.tensor([1.0, 0.5, -0.5, -1.0]))  # lerp
    x = torch.randn(1, 4, 6, 5)
    assert torch.allclose(bislerp(x, 5, 6), x, atol=1e-5)
    assert bislerp(x.half(), 10, 12).dtype == torch.float16
    up = LatentUpscale(samples={"samples": x}, upscale_method="bislerp", width=80, height=96, crop="disabled")
    assert up["samples"].shape == (1, 4, 12, 10)


def test_center_crop_takes_the_rounded_margin_from_both_sides():
    x = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 4, 10, 10)  # column j holds j
    out = LatentUpscale(samples={"samples": x}, upscale_method="nearest-exact", width=64, height=128, crop="center")
    # 1:1 to 1:2 takes round((10 - 10 * 0.5) / 2) = round(2.5) = 2 columns off each side: 2..7
    # remain, 6 of them, which nearest-exact spreads over 8 columns.
    assert out["samples"].shape == (1, 4, 16, 8)
    assert out["samples"][0, 0, 0].tolist() == [2.0, 3.0, 3.0, 4.0, 5.0, 6.0, 6.0, 7.0]


def test_from_batch_keeps_batch_index_and_slices_masks():
    lat = _latent(b=4, other=1)
    out = LatentFromBatch(samples=lat, batch_index=1, length=2)
    assert torch.equal(out["samples"], lat["samples"][1:3]) and out["batch_index"] == [1, 2] and out["other"] == 1
    again = LatentFromBatch(samples=out, batch_index=1, length=5)  # clamped to what is there
    assert again["batch_index"] == [2] and torch.equal(again["samples"], lat["samples"][2:3])
    past_end = LatentFromBatch(samples=lat, batch_index=63, length=3)
    assert past_end["batch_index"] == [3] and past_end["samples"].shape[0] == 1
    two_masks = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])  # cycled over 4 items: 0 1 0 1
    out = LatentFromBatch(samples=_latent(b=4, noise_mask=two_masks), batch_index=1, length=3)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0]
    one_mask = torch.rand(1, 1, 8, 8)
    out = LatentFromBatch(samples=_latent(b=4, noise_mask=one_mask), batch_index=2, length=2)
    assert torch.equal(out["noise_mask"], one_mask) and out["noise_mask"] is not one_mask
    assert "batch_index" not in lat  # the input dict is untouched


def test_repeat_offsets_batch_indices_and_repeats_masks():
    lat = _latent(b=2, batch_index=[2, 5], noise_mask=torch.rand(2, 1, 8, 8))
    out = RepeatLatentBatch(samples=lat, amount=3)
    assert out["samples"].shape[0] == 6 and torch.equal(out["samples"][4:], lat["samples"])
    assert out["batch_index"] == [2, 5, 6, 9, 10, 13]  # offset max - min + 1 = 4
    assert torch.equal(out["noise_mask"], lat["noise_mask"].repeat(3, 1, 1, 1))
    single = _latent(b=2, noise_mask=torch.rand(1, 1, 8, 8))
    out = RepeatLatentBatch(samples=single, amount=2)
    assert out["noise_mask"] is single["noise_mask"] and "batch_index" not in out
    assert lat["batch_index"] == [2, 5]


def test_composite_pastes_and_clips():
    to = {"samples": torch.zeros(2, 4, 4, 6), "keep": True}
    src = {"samples": torch.ones(1, 4, 3, 3)}
    out = LatentComposite(samples_to=to, samples_from=src, x=32, y=8, feather=0)
    s = out["samples"]
    assert out["keep"] and s[:, :, 1:4, 4:6].eq(1).all() and s.sum() == 2 * 4 * 3 * 2  # cut at the right
    assert to["samples"].eq(0).all()
    outside = LatentComposite(samples_to=to, samples_from=src, x=48, y=0, feather=0)["samples"]
    assert outside.eq(0).all()
    with pytest.raises(ValueError, match="batch"):
        LatentComposite(samples_to=to, samples_from={"samples": torch.ones(3, 4, 2, 2)}, x=0, y=0, feather=0)


def test_composite_feathers_only_inner_seams():
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 6, 8)}
    # At y = 2 latent rows the top seam is inside, the bottom one on the edge; x = 0, full width.
    out = LatentComposite(samples_to=to, samples_from=src, x=0, y=16, feather=16)["samples"][0, 0]
    assert torch.equal(out[:, 0], torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]))
    assert torch.equal(out, out[:, :1].expand(8, 8))
    mid = LatentComposite(samples_to=to, samples_from={"samples": torch.ones(1, 1, 4, 4)}, x=16, y=16,
                          feather=16)["samples"][0, 0]
    assert torch.allclose(mid[2, 2:6], torch.tensor([0.25, 0.5, 0.5, 0.25]))  # corner row: both fades
    assert torch.allclose(mid[3, 2:6], torch.tensor([0.5, 1.0, 1.0, 0.5]))


def test_set_noise_mask_reshapes_and_keeps_keys():
    lat = _latent(b=1, batch_index=[4])
    out = SetLatentNoiseMask(samples=lat, mask=torch.ones(2, 16, 24))
    assert out["noise_mask"].shape == (2, 1, 16, 24) and out["batch_index"] == [4] and "noise_mask" not in lat
    assert SetLatentNoiseMask(samples=lat, mask=torch.ones(16, 24))["noise_mask"].shape == (1, 1, 16, 24)


def test_latent_nodes_in_a_workflow(registry, env):
    wf = Workflow()
    empty = wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=2)
    up = wf.add("up", "LatentUpscaleBy", samples=empty, upscale_method="bislerp", scale_by=2.0)
    rep = wf.add("rep", "RepeatLatentBatch", samples=up, amount=2)
    pick = wf.add("pick", "LatentFromBatch", samples=rep, batch_index=1, length=2)
    mask = wf.add("mask", "SolidMask", value=1.0, width=128, height=128)
    masked = wf.add("masked", "SetLatentNoiseMask", samples=pick, mask=mask)
    small = wf.add("small", "EmptyLatentImage", width=32, height=32)
    wf.add("comp", "LatentComposite", samples_to=masked, samples_from=small, x=64, y=64, feather=8)
    wf.add("sized", "LatentUpscale", samples="comp", upscale_method="bilinear", width=256, height=0)
    ex = Executor(registry, env)
    res = ex.run(wf, targets=["sized"])
    out = res.get("sized")
    assert out["samples"].shape == (2, 4, 32, 32) and out["batch_index"] == [1, 2]
    assert out["noise_mask"].shape == (1, 1, 128, 128)
    assert sorted(res.executed) == ["comp", "empty", "mask", "masked", "pick", "rep", "sized", "small", "up"]
    assert ex.run(wf, targets=["sized"]).executed == []
