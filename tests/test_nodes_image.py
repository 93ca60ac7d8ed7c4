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
                                     ImageScale)
from latentgraph.nodes.mask import FeatherMask, ImageToMask, InvertMask, MaskToImage, SolidMask


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
