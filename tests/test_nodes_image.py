"""The built-in image and mask nodes, on small tensors with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from latentgraph.graph import Executor, Workflow
from latentgraph.nodes import create_registry
from latentgraph.nodes.image import (EmptyImage, ImageBlend, ImageBlur, ImageCompositeMasked, ImageInvert,
                                     ImagePadForOutpaint, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
                                     resize, upscale)
from latentgraph.nodes.mask import FeatherMask, GrowMask, ImageToMask, InvertMask, MaskToImage, SolidMask


def test_empty_image_colour_and_shape():
    img = EmptyImage(width=4, height=3, batch_size=2, color=0xFF8000)
    assert img.shape == (2, 3, 4, 3)
    assert torch.allclose(img[1, 2, 3], torch.tensor([1.0, 128 / 255, 0.0]))


def test_invert_and_blend_modes():
    a = torch.full((1, 2, 2, 3), 0.25)
    b = torch.full((1, 2, 2, 3), 0.5)
    assert torch.allclose(ImageInvert(image=a), torch.full_like(a, 0.75))
    expected = {"normal": 0.5, "multiply": 0.125, "screen": 0.625, "overlay": 0.25,
                "difference": 0.0, "soft_light": 0.25}
    for mode, value in expected.items():
        out = ImageBlend(image1=a, image2=b, blend_factor=1.0, blend_mode=mode)
        assert torch.allclose(out, torch.full_like(a, value)), mode
    half = ImageBlend(image1=a, image2=b, blend_factor=0.5, blend_mode="multiply")
    assert torch.allclose(half, torch.full_like(a, 0.5 * 0.25 + 0.5 * 0.125))


def test_blend_resizes_the_second_image():
    a = torch.zeros((1, 8, 8, 3))
    b = torch.ones((1, 4, 4, 3))
    assert ImageBlend(image1=a, image2=b, blend_factor=1.0, blend_mode="normal").shape == (1, 8, 8, 3)


def test_blur_keeps_flat_images_and_spreads_a_point():
    flat = torch.full((1, 9, 9, 3), 0.3)
    assert torch.allclose(ImageBlur(image=flat, blur_radius=3, sigma=1.5), flat, atol=1e-6)
    point = torch.zeros((1, 9, 9, 1))
    point[0, 4, 4, 0] = 1.0
    out = ImageBlur(image=point, blur_radius=2, sigma=1.0)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[0, 4, 4, 0] > out[0, 4, 5, 0] > out[0, 4, 6, 0] > 0 and out[0, 4, 7, 0] == 0


def test_scale_keeps_aspect_when_one_side_is_zero():
    img = torch.rand((1, 10, 20, 3))
    assert ImageScale(image=img, upscale_method="bilinear", width=10, height=0, crop="disabled").shape == (1, 5, 10, 3)
    assert ImageScale(image=img, upscale_method="lanczos", width=0, height=20, crop="disabled").shape == (1, 20, 40, 3)
    assert ImageScale(image=img, upscale_method="area", width=8, height=8, crop="center").shape == (1, 8, 8, 3)


def test_composite_places_the_source_through_the_mask():
    dest = torch.zeros((1, 6, 6, 3))
    src = torch.ones((1, 2, 3, 3))
    out = ImageCompositeMasked(destination=dest, source=src, x=4, y=1, resize_source=False)
    assert out[0, 1:3, 4:6].eq(1).all() and out.sum() == 2 * 2 * 3  # clipped at the right edge
    mask = torch.full((1, 2, 3), 0.5)
    out = ImageCompositeMasked(destination=dest, source=src, x=0, y=0, resize_source=False, mask=mask)
    assert torch.allclose(out[0, 0:2, 0:3], torch.full((2, 3, 3), 0.5))


def test_masks():
    m = SolidMask(value=0.25, width=3, height=2)
    assert m.shape == (1, 2, 3) and torch.allclose(InvertMask(mask=m), torch.full((1, 2, 3), 0.75))
    img = MaskToImage(mask=m)
    assert img.shape == (1, 2, 3, 3) and torch.allclose(ImageToMask(image=img, channel="green"), m)
    assert ImageToMask(image=img, channel="alpha").eq(0).all()
    feathered = FeatherMask(mask=torch.ones((1, 1, 4)), left=4, top=0, right=0, bottom=0)
    assert torch.allclose(feathered[0, 0], torch.tensor([0.25, 0.5, 0.75, 1.0]))


def test_load_image_gives_image_and_inverted_alpha_mask(env):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque pixel
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "pic.png")
    wf = Workflow()
    wf.add("load", "LoadImage", image="pic.png")
    res = Executor(create_registry(), env).run(wf, targets=["load"])
    image, mask = res.get("load", 0), res.get("load", 1)
    assert image.shape == (1, 2, 3, 3) and image[..., 0].eq(1).all()
    assert mask.shape == (1, 2, 3) and mask[0, 0, 0] == 0 and mask[0, 1, 2] == 1


def test_load_image_validation_and_file_fingerprint(env):
    from latentgraph.graph import ValidationError

    reg = create_registry()
    ex = Executor(reg, env)
    wf = Workflow()
    wf.add("load", "LoadImage", image="pic.png")
    wf.add("save", "SaveImage", images="load.IMAGE", filename_prefix="x")
    with pytest.raises(ValidationError) as info:
        ex.run(wf)
    assert "Invalid image file: pic.png" in info.value.format()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(env.input_dir / "pic.png")
    assert sorted(ex.run(wf).executed) == ["load", "save"]
    assert ex.run(wf).executed == []
    Image.new("RGB", (2, 2), (99, 20, 30)).save(env.input_dir / "pic.png")  # new content
    assert sorted(ex.run(wf).executed) == ["load", "save"]
    wf.set("load.image", "../outside.png")
    with pytest.raises(ValidationError):
        ex.run(wf)


def test_save_image_counts_up_and_embeds_the_prompt(env):
    reg = create_registry()
    ex = Executor(reg, env)
    wf = Workflow()
    wf.add("img", "EmptyImage", width=2, height=2, batch_size=2, color=0x010203)
    wf.add("save", "SaveImage", images="img", filename_prefix="run/pic")
    res = ex.run(wf, extra_data={"extra_pnginfo": {"workflow": {"note": "hi"}}})
    assert res.outputs["save"]["images"] == [
        {"filename": "pic_00001_.png", "subfolder": "run", "type": "output"},
        {"filename": "pic_00002_.png", "subfolder": "run", "type": "output"}]
    wf.set("img.color", 0x020304)
    res = ex.run(wf)
    assert [i["filename"] for i in res.outputs["save"]["images"]] == ["pic_00003_.png", "pic_00004_.png"]
    first = Image.open(env.output_dir / "run" / "pic_00001_.png")
    assert json.loads(first.text["prompt"])["img"]["inputs"]["color"] == 0x010203
    assert json.loads(first.text["workflow"]) == {"note": "hi"}
    wf.set("save.filename_prefix", "../escape")
    from latentgraph.graph import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="outside"):
        ex.run(wf)


def test_preview_goes_to_temp(env):
    wf = Workflow()
    wf.add("img", "EmptyImage", width=2, height=2)
    wf.add("preview", "PreviewImage", images="img")
    res = Executor(create_registry(), env).run(wf)
    (entry,) = res.outputs["preview"]["images"]
    assert entry["type"] == "temp" and (env.temp_dir / entry["filename"]).is_file()


def _int(default, lo, hi, step=1):
    return ["INT", {"default": default, "min": lo, "max": hi, "step": step}]


SCALE = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
# ComfyUI's /object_info for the nodes added here: category, display name, inputs, outputs.
SPECS = {
    "ImageScaleBy": ("image/upscaling", "Upscale Image By", {
        "image": ["IMAGE"], "upscale_method": [SCALE, {"default": "nearest-exact"}],
        "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]}, ["IMAGE"]),
    "ImageScaleToTotalPixels": ("image/upscaling", "Scale Image to Total Pixels", {
        "image": ["IMAGE"], "upscale_method": [SCALE, {"default": "nearest-exact"}],
        "megapixels": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}]}, ["IMAGE"]),
    "ImagePadForOutpaint": ("image", "Pad Image for Outpainting", {
        "image": ["IMAGE"], "left": _int(0, 0, 16384, 8), "top": _int(0, 0, 16384, 8),
        "right": _int(0, 0, 16384, 8), "bottom": _int(0, 0, 16384, 8), "feathering": _int(40, 0, 16384)},
        ["IMAGE", "MASK"]),
    "GrowMask": ("mask", "GrowMask", {
        "mask": ["MASK"], "expand": _int(0, -16384, 16384), "tapered_corners": ["BOOLEAN", {"default": True}]},
        ["MASK"]),
    "LoadImageMask": ("mask", "Load Image (as Mask)", {
        "image": [["pic.png"], {"image_upload": True}],
        "channel": [["alpha", "red", "green", "blue"], {"default": "alpha"}]}, ["MASK"]),
}


@pytest.mark.parametrize("name", SPECS)
def test_object_info_of_added_nodes_matches_comfyui(name, env):
    Image.new("RGB", (2, 2)).save(env.input_dir / "pic.png")
    category, display, inputs, outputs = SPECS[name]
    info = create_registry().object_info(env)[name]
    assert (info["category"], info["display_name"], info["output"], info["output_name"]) == (
        category, display, outputs, outputs)
    assert info["input_order"] == {"required": list(inputs)} and info["input"]["required"] == inputs


def test_resize_matches_torch_and_pil_as_comfyui():
    torch.manual_seed(0)
    img = torch.rand(2, 5, 7, 3)
    x = img.movedim(-1, 1)
    for method in ("nearest-exact", "bilinear", "bicubic"):
        ref = torch.nn.functional.interpolate(x, size=(9, 4), mode=method).movedim(1, -1)
        assert torch.equal(resize(img, 4, 9, method), ref), method
    assert torch.equal(resize(img, 3, 2, "area"), torch.nn.functional.adaptive_avg_pool2d(x, (2, 3)).movedim(1, -1))
    bicubic = resize(torch.tensor([0.0, 0.0, 1.0, 1.0]).view(1, 1, 4, 1).expand(1, 1, 4, 3), 3, 8, "bicubic")
    assert bicubic.min() < 0 and bicubic.max() > 1  # overshoot is kept, not clamped (as ComfyUI)
    lz = resize(img, 14, 10, "lanczos")
    assert lz.shape == (2, 10, 14, 3) and torch.equal(lz, torch.round(lz * 255) / 255)  # 8-bit steps
    pil = Image.fromarray((img[1].numpy() * 255).astype(np.uint8)).resize((14, 10), Image.LANCZOS)
    assert torch.equal(lz[1], torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
    assert resize(img[..., :1], 14, 10, "lanczos").shape == (2, 10, 14, 1)


def test_center_crop_rounds_the_margin_like_comfyui():
    cols = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 5, 10)  # (B, C, H, W), 2:1
    # to 1:1: margin round((10 - 10 * 0.5) / 2) = round(2.5) = 2 a side, so 6 columns stay
    out = upscale(cols, 6, 6, "nearest-exact", "center")
    assert out[0, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]


def test_scale_by_and_to_total_pixels():
    img = torch.rand(1, 50, 100, 3)
    assert ImageScaleBy(image=img, upscale_method="bilinear", scale_by=0.25).shape == (1, 12, 25, 3)  # round(12.5)
    # int(0.01 * 1024^2) = 10485 pixels: scale sqrt(10485 / 5000) = 1.448..., 144.8 x 72.4
    out = ImageScaleToTotalPixels(image=img, upscale_method="area", megapixels=0.01)
    assert out.shape == (1, 72, 145, 3)


def test_pad_for_outpaint_mask_feathers_towards_padded_sides():
    img = torch.full((2, 10, 10, 3), 0.2)
    out, mask = ImagePadForOutpaint(image=img, left=8, top=0, right=0, bottom=0, feathering=3)
    assert out.shape == (2, 10, 18, 3) and out[:, :, :8].eq(0.5).all() and out[:, :, 8:].eq(0.2).all()
    assert mask.shape == (1, 10, 18) and mask[:, :, :8].eq(1).all()
    expected = torch.tensor([1.0, 4 / 9, 1 / 9, 0, 0, 0, 0, 0, 0, 0])  # ((3 - d) / 3)^2, d = column
    assert torch.allclose(mask[0, :, 8:], expected.expand(10, 10))
    _, mask = ImagePadForOutpaint(image=img, left=8, top=8, right=0, bottom=0, feathering=5)
    assert mask[0, 8:, 8:].eq(0).all()  # 2 * 5 is not less than 10: no fade
    _, mask = ImagePadForOutpaint(image=img, left=0, top=8, right=0, bottom=8, feathering=4)
    assert mask[0, 8, 0] == 1 and mask[0, 17, 0] == pytest.approx(0.75 ** 2)  # d = 10 - 9 = 1 at the bottom


def test_feather_mask_far_sides_as_comfyui():
    # ComfyUI scales columns -0, -1, -2, -3 = 0, 3, 2, 1 by 1/4, 2/4, 3/4, 4/4.
    right = FeatherMask(mask=torch.ones((1, 1, 4)), left=0, top=0, right=4, bottom=0)
    assert torch.equal(right[0, 0], torch.tensor([0.25, 1.0, 0.75, 0.5]))
    both = FeatherMask(mask=torch.ones((1, 3, 1)), left=0, top=2, right=0, bottom=2)
    assert torch.equal(both[0, :, 0], torch.tensor([0.5 * 0.5, 1.0, 1.0]))
    assert FeatherMask(mask=torch.ones((2, 2)), left=9, top=0, right=0, bottom=0).shape == (1, 2, 2)


def test_grow_mask_plus_and_square_footprints():
    dot = torch.zeros(1, 5, 5)
    dot[0, 2, 2] = 1.0
    plus = GrowMask(mask=dot, expand=1, tapered_corners=True)[0]
    assert plus.sum() == 5 and plus[1, 2] == plus[2, 1] == 1 and plus[1, 1] == 0
    assert GrowMask(mask=dot, expand=2, tapered_corners=True)[0].sum() == 13  # a diamond of radius 2
    assert GrowMask(mask=dot, expand=1, tapered_corners=False)[0].sum() == 9
    square = torch.ones(1, 5, 5)
    square[0, 0, 0] = 0.0
    shrunk = GrowMask(mask=square, expand=-1, tapered_corners=False)[0]
    assert shrunk[:2, :2].eq(0).all() and shrunk.sum() == 25 - 4  # the border counts as inside
    assert torch.equal(GrowMask(mask=dot, expand=0, tapered_corners=True), dot)
    assert GrowMask(mask=dot, expand=16384, tapered_corners=True).eq(1).all()  # fast: stops at h + w


def test_grow_mask_equals_scipy_grey_morphology():
    ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(0)
    masks = torch.rand(2, 9, 7)
    for tapered in (True, False):
        c = 0 if tapered else 1
        footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
        for expand in (-3, -1, 2, 4):
            op = ndimage.grey_erosion if expand < 0 else ndimage.grey_dilation
            ref = []
            for m in masks.numpy():
                for _ in range(abs(expand)):
                    m = op(m, footprint=footprint)
                ref.append(torch.from_numpy(m))
            assert torch.equal(GrowMask(mask=masks, expand=expand, tapered_corners=tapered), torch.stack(ref))


def test_load_image_mask_channels(env):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 51  # mostly transparent
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "m.png")
    Image.new("RGB", (3, 2), (0, 0, 255)).save(env.input_dir / "rgb.png")
    wf = Workflow()
    wf.add("alpha", "LoadImageMask", image="m.png", channel="alpha")
    wf.add("red", "LoadImageMask", image="m.png", channel="red")
    wf.add("noalpha", "LoadImageMask", image="rgb.png")
    wf.add("blue", "LoadImageMask", image="rgb.png", channel="blue")
    res = Executor(create_registry(), env).run(wf, targets=["alpha", "red", "noalpha", "blue"])
    alpha = res.get("alpha")
    assert alpha.shape == (1, 2, 3) and alpha[0, 0, 0] == 0 and alpha[0, 1, 2] == pytest.approx(0.8)
    assert res.get("red").eq(1).all()
    assert res.get("noalpha").shape == (1, 2, 3) and res.get("noalpha").eq(0).all()  # opaque, as ComfyUI
    assert res.get("blue").eq(1).all()


def test_load_image_mask_validation_and_fingerprint(env):
    from latentgraph.graph import ValidationError

    ex = Executor(create_registry(), env)
    wf = Workflow()
    wf.add("m", "LoadImageMask", image="m.png", channel="red")
    with pytest.raises(ValidationError) as info:
        ex.run(wf, targets=["m"])
    assert "Invalid image file: m.png" in info.value.format()
    Image.new("RGB", (2, 2), (10, 20, 30)).save(env.input_dir / "m.png")
    assert ex.run(wf, targets=["m"]).executed == ["m"]
    assert ex.run(wf, targets=["m"]).executed == []
    Image.new("RGB", (2, 2), (99, 20, 30)).save(env.input_dir / "m.png")
    res = ex.run(wf, targets=["m"])
    assert res.executed == ["m"] and res.get("m")[0, 0, 0] == pytest.approx(99 / 255)


def test_added_image_and_mask_nodes_in_a_workflow(env):
    wf = Workflow()
    img = wf.add("img", "EmptyImage", width=16, height=16, color=0xFF0000)
    pad = wf.add("pad", "ImagePadForOutpaint", image=img, left=8, right=8, feathering=4)
    wf.add("grown", "GrowMask", mask=pad.MASK, expand=-2)
    wf.add("feathered", "FeatherMask", mask="grown", right=4)
    by = wf.add("by", "ImageScaleBy", image=pad.IMAGE, upscale_method="lanczos", scale_by=0.5)
    wf.add("total", "ImageScaleToTotalPixels", image=by, upscale_method="bicubic", megapixels=0.01)
    res = Executor(create_registry(), env).run(wf, targets=["feathered", "total"])
    assert res.get("feathered").shape == (1, 16, 32)
    assert res.get("total").shape == (1, 72, 145, 3)  # 16 x 16 -> 10485 pixels at 2:1
