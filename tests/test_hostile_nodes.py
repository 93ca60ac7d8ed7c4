"""Hostile node inputs (issue 14): a small workflow or a small input file must not make a node
allocate gigabytes. Image files are held to image_pixels / image_frames from their headers
before any frame is decoded (and Pillow's decompression-bomb guard ends as the same clean
error), prompts to prompt_chars before tokenizing, and tensors a node makes from its inputs'
values to tensor_bytes before allocating. Each refusal is checked through the executor: the
node id and exact message, no traceback, memory well below the would-be allocation, nothing
written in the output folder; and normal sizes still work."""

from __future__ import annotations

import dataclasses
import io
import resource
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from latentgraph.graph import Executor, NodeExecutionError, Workflow
from latentgraph.graph.budgets import BUDGETS
from latentgraph.models.tokenizer import PromptTokenizer
from latentgraph.nodes import create_registry, create_services
from latentgraph.nodes.budget import human_bytes

MiB = 2**20
CKPT = "latentgraph-shapes.safetensors"  # the shipped demo model: SD1 layout, tiny


@pytest.fixture(scope="module")
def registry():
    return create_registry()


@pytest.fixture
def ex(registry, env) -> Executor:
    return Executor(registry, env, services=create_services(env))


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def refused(ex: Executor, wf: Workflow, node_id: str, class_type: str, message: str, targets=None) -> None:
    """Running ``wf`` stops at ``node_id`` with exactly ``message``; the peak memory (Python
    and numpy by tracemalloc, torch and Pillow by the process's peak RSS) stays far below
    any of the refused allocations (all >= 1 GiB unless a test lowers a limit), and the output
    folder stays empty."""
    rss_before = peak_rss()
    tracemalloc.start()
    try:
        with pytest.raises(NodeExecutionError) as info:
            ex.run(wf, targets=targets)
        _, traced = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = info.value
    assert err.node_id == node_id
    assert err.format() == f"node '{node_id}' ({class_type}) failed: ValueError: {message}"
    assert "Traceback" not in err.format()
    assert traced < 32 * MiB
    assert peak_rss() - rss_before < 200 * MiB
    assert list(ex.env.output_dir.iterdir()) == []


def set_limit(monkeypatch, name: str, value: int) -> None:
    monkeypatch.setitem(BUDGETS, name, dataclasses.replace(BUDGETS[name], limit=value))


# -- hostile files, built byte by byte -----------------------------------------------------------
def png_chunks(data: bytes, kind: bytes, patch) -> bytes:
    """``data`` (a PNG) with the body of each ``kind`` chunk replaced by ``patch(body)``, CRCs fixed."""
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if tag == kind:
            body = patch(body)
        out += struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))
        pos += 12 + n
    return bytes(out)


def png_claiming(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (the CRC fixed, so it opens)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    return png_chunks(buf.getvalue(), b"IHDR", lambda body: struct.pack(">II", width, height) + body[8:])


def gif(width: int, height: int, frames: int) -> bytes:
    """A GIF with a width x height canvas and ``frames`` frames of one black pixel (16 bytes each)."""
    head = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    # image descriptor 1x1 at (0, 0); LZW min code size 2: clear (4), index 0, end (5) in 3-bit codes
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b";"


def animated(fmt: str, colours: list[tuple], size=(1, 1), **save) -> bytes:
    ims = [Image.new("RGB", size, c) for c in colours]
    buf = io.BytesIO()
    ims[0].save(buf, fmt, save_all=True, append_images=ims[1:], **save)
    return buf.getvalue()


def webp_canvas(data: bytes, width: int, height: int) -> bytes:
    """An animated WebP with its VP8X canvas patched (24-bit little-endian sizes minus one)."""
    out = bytearray(data)
    assert out[12:16] == b"VP8X"
    out[24:27], out[27:30] = (width - 1).to_bytes(3, "little"), (height - 1).to_bytes(3, "little")
    return bytes(out)


def load_flow(image: str) -> Workflow:
    wf = Workflow()
    wf.add("load", "LoadImage", image=image)
    wf.add("save", "SaveImage", images="load.IMAGE", filename_prefix="x")
    return wf


def mask_flow(image: str) -> Workflow:
    wf = Workflow()
    wf.add("mask", "LoadImageMask", image=image, channel="alpha")
    wf.add("img", "MaskToImage", mask="mask")
    wf.add("save", "SaveImage", images="img", filename_prefix="x")
    return wf


LIMIT_PIXELS = "exceeds the limit image_pixels = 268,435,456 pixels"


# -- 1. image files --------------------------------------------------------------------------------
def test_a_png_header_claiming_100000_squared_is_refused_by_pillows_guard_as_a_clean_error(ex, env):
    (env.input_dir / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    pillow = ("refused by Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS = 89,478,485 pixels): "
              "Image size (10000000000 pixels) exceeds limit of 178956970 pixels, could be decompression bomb "
              "DOS attack.")
    refused(ex, load_flow("bomb.png"), "load", "LoadImage", f"image 'bomb.png' is {pillow}")
    refused(ex, mask_flow("bomb.png"), "mask", "LoadImageMask", f"image 'bomb.png' is {pillow}")


def test_pillows_bomb_warning_range_loads_quietly_and_past_it_is_a_clean_error(ex, env, recwarn, monkeypatch):
    """Our own header check has run by then, so Pillow's warning (1x to 2x its limit) is not
    needed: the image loads as in ComfyUI, without the warning; past 2x, Pillow's error is ours."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # scaled down: 1x = 1,000, 2x = 2,000 pixels
    Image.new("RGB", (40, 30), (200, 10, 10)).save(env.input_dir / "warned.png")  # 1,200 pixels
    Image.new("RGB", (50, 50), (200, 10, 10)).save(env.input_dir / "refused.png")  # 2,500 pixels
    ex.run(load_flow("warned.png"))
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    saved = sorted(p.name for p in env.output_dir.iterdir())
    assert saved == ["x_00001_.png"]
    with Image.open(env.output_dir / saved[0]) as out:  # (this open warns: it is the test's, unguarded)
        assert out.size == (40, 30) and out.getpixel((0, 0)) == (200, 10, 10)
    (env.output_dir / saved[0]).unlink()
    refused(ex, load_flow("refused.png"), "load", "LoadImage",
            "image 'refused.png' is refused by Pillow's decompression-bomb guard (PIL.Image.MAX_IMAGE_PIXELS = "
            "1,000 pixels): Image size (2500 pixels) exceeds limit of 2000 pixels, could be "
            "decompression bomb DOS attack.")


def test_with_pillows_guard_off_image_pixels_still_holds_one_frame(ex, env, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # what a user who lifts Pillow's limit gets
    (env.input_dir / "huge.png").write_bytes(png_claiming(20_000, 20_000))
    message = f"image 'huge.png': a frame of 20000 x 20000 = 400,000,000 pixels {LIMIT_PIXELS}"
    refused(ex, load_flow("huge.png"), "load", "LoadImage", message)
    refused(ex, mask_flow("huge.png"), "mask", "LoadImageMask", message)


def test_a_gif_of_100000_frames_is_refused_by_its_frame_count_before_any_is_decoded(ex, env):
    data = gif(64, 64, 100_000)
    assert len(data) < 2 * MiB
    (env.input_dir / "many.gif").write_bytes(data)
    start = time.monotonic()
    refused(ex, load_flow("many.gif"), "load", "LoadImage",
            "image 'many.gif': 100,000 frames exceeds the limit image_frames = 10,000 frames")
    assert time.monotonic() - start < 10  # the header walk only (decoding them all takes far longer)


def test_frames_times_canvas_is_refused_from_the_header_for_gif_apng_and_webp(ex, env):
    # 5 frames of one pixel each, on an 8000 x 8000 canvas: each frame decodes to the whole canvas
    apng = animated("PNG", [(i, 0, 0) for i in range(2)])
    apng = png_chunks(apng, b"IHDR", lambda b: struct.pack(">II", 8000, 8000) + b[8:])
    apng = png_chunks(apng, b"acTL", lambda b: struct.pack(">I", 5) + b[4:])
    files = {"canvas.gif": gif(8000, 8000, 5), "canvas.png": apng,
             "canvas.webp": webp_canvas(animated("WEBP", [(i, 0, 0) for i in range(5)], lossless=True), 8000, 8000)}
    for name, data in files.items():
        assert len(data) < 4096
        (env.input_dir / name).write_bytes(data)
        refused(ex, load_flow(name), "load", "LoadImage",
                f"image '{name}': 5 frames of 8000 x 8000 = 320,000,000 pixels {LIMIT_PIXELS}")


def test_an_apng_declaring_100000_frames_is_refused(ex, env):
    apng = png_chunks(animated("PNG", [(0, 0, 0), (9, 9, 9)]), b"acTL", lambda b: struct.pack(">I", 100_000) + b[4:])
    (env.input_dir / "claims.png").write_bytes(apng)
    refused(ex, load_flow("claims.png"), "load", "LoadImage",
            "image 'claims.png': 100,000 frames exceeds the limit image_frames = 10,000 frames")


def test_pages_of_differing_sizes_are_counted_as_they_come(ex, env, monkeypatch):
    # TIFF pages each have their own size, so the running total is what holds: the 4th page of
    # 100 x 100 passes a (lowered) limit of 30,000 pixels and is refused before it is decoded.
    set_limit(monkeypatch, "image_pixels", 30_000)
    (env.input_dir / "pages.tiff").write_bytes(animated("TIFF", [(i * 50, 0, 0) for i in range(4)], size=(100, 100)))
    refused(ex, load_flow("pages.tiff"), "load", "LoadImage",
            "image 'pages.tiff': frames 1 to 4 = 40,000 pixels exceeds the limit image_pixels = 30,000 pixels")
    set_limit(monkeypatch, "image_pixels", 40_000)  # exactly the total: loads
    image = ex.run(load_flow("pages.tiff"), targets=["load"]).get("load", 0)
    assert image.shape == (4, 100, 100, 3)
    assert [round(float(v) * 255) for v in image[:, 0, 0, 0]] == [0, 50, 100, 150]


def test_normal_images_and_animations_still_load(ex, env):
    (env.input_dir / "anim.gif").write_bytes(animated("GIF", [(255, 0, 0), (0, 255, 0), (0, 0, 255)], size=(5, 4)))
    (env.input_dir / "anim.png").write_bytes(animated("PNG", [(10, 20, 30), (40, 50, 60)], size=(3, 2)))
    (env.input_dir / "anim.webp").write_bytes(animated("WEBP", [(200, 0, 0), (0, 0, 200)], size=(3, 2), lossless=True))
    rgba = np.zeros((6, 7, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0  # one transparent pixel
    Image.fromarray(rgba, "RGBA").save(env.input_dir / "one.png")
    wf = Workflow()
    for name in ("anim.gif", "anim.png", "anim.webp", "one.png"):
        wf.add(name.replace(".", "_"), "LoadImage", image=name)
    wf.add("mask", "LoadImageMask", image="one.png", channel="alpha")
    res = ex.run(wf, targets=["anim_gif", "anim_png", "anim_webp", "one_png", "mask"])
    gif_image = res.get("anim_gif", 0)
    assert gif_image.shape == (3, 4, 5, 3) and gif_image.dtype == torch.float32
    assert gif_image[:, 0, 0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    assert res.get("anim_png", 0).shape == (2, 2, 3, 3)
    assert res.get("anim_png", 0)[1, 0, 0].tolist() == [np.float32(v) / np.float32(255) for v in (40, 50, 60)]
    assert res.get("anim_webp", 0).shape == (2, 2, 3, 3)
    assert res.get("one_png", 1).shape == (1, 6, 7) and res.get("one_png", 1).sum().item() == 1.0
    assert res.get("mask", 0).shape == (1, 6, 7) and res.get("mask", 0)[0, 0, 0].item() == 1.0


# -- 2. prompt text --------------------------------------------------------------------------------
@pytest.fixture
def tokenized(monkeypatch) -> list[int]:
    """Lengths of the texts the CLIP tokenizers were given (to show a refused one never was)."""
    seen: list[int] = []
    original = PromptTokenizer.tokenize_with_weights

    def spy(self, text, *args, **kwargs):
        seen.append(len(text))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(PromptTokenizer, "tokenize_with_weights", spy)
    return seen


def prompt_flow(node: str = "CLIPTextEncode", **texts) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=CKPT)
    extra = {"width": 1024, "height": 1024} if node != "CLIPTextEncode" else {}
    if node == "CLIPTextEncodeSDXL":
        extra.update(crop_w=0, crop_h=0, target_width=1024, target_height=1024)
    if node == "CLIPTextEncodeSDXLRefiner":
        extra["ascore"] = 6.0
    wf.add("enc", node, clip=ck.CLIP, **texts, **extra)
    return wf


def test_a_huge_prompt_is_refused_before_tokenizing_naming_the_input(ex, tokenized):
    message = "input 'text' of 1,400,000 characters exceeds the limit prompt_chars = 100,000 characters"
    refused(ex, prompt_flow(text="a red circle, " * 100_000),
            "enc", "CLIPTextEncode", message, targets=["enc"])
    assert tokenized == []
    refused(ex, prompt_flow("CLIPTextEncodeSDXLRefiner", text="y" * 100_001), "enc", "CLIPTextEncodeSDXLRefiner",
            "input 'text' of 100,001 characters exceeds the limit prompt_chars = 100,000 characters", targets=["enc"])
    refused(ex, prompt_flow("CLIPTextEncodeSDXL", text_g="ok", text_l="z" * 200_000), "enc", "CLIPTextEncodeSDXL",
            "input 'text_l' of 200,000 characters exceeds the limit prompt_chars = 100,000 characters",
            targets=["enc"])
    assert tokenized == []


def test_a_huge_prompt_through_a_link_is_refused_too(ex, tokenized):
    wf = prompt_flow(text="placeholder")
    words = wf.add("words", "PrimitiveStringMultiline", value="w " * 60_000)
    wf.set("enc.text", words)
    refused(ex, wf, "enc", "CLIPTextEncode",
            "input 'text' of 120,000 characters exceeds the limit prompt_chars = 100,000 characters", targets=["enc"])
    assert tokenized == []


def test_prompts_up_to_the_limit_are_encoded(ex, tokenized, monkeypatch):
    set_limit(monkeypatch, "prompt_chars", 300)  # a lowered limit keeps the boundary case fast
    text = ("a red circle on blue, " * 14)[:300]
    res = ex.run(prompt_flow(text=text), targets=["enc"])
    cond = res.get("enc", 0)
    assert len(cond) == 1 and cond[0][0].shape[:2] == (1, 77 * 2)  # ~80 tokens: two chunks
    assert tokenized == [300]
    refused(ex, prompt_flow(text=text + "!"), "enc", "CLIPTextEncode",
            "input 'text' of 301 characters exceeds the limit prompt_chars = 300 characters", targets=["enc"])
    assert tokenized == [300]


# -- 3. tensors sized by widget values -------------------------------------------------------------
def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 8 * 2**30, 256 * 2**30, 12 * 2**40, 3 * 2**20 + 1)] == [
        "0 bytes", "1,023 bytes", "1 KiB", "1.5 KiB", "8 GiB", "256 GiB", "12 TiB", "3 MiB"]


def test_empty_latent_image_and_empty_image_of_the_largest_declared_sizes(ex):
    wf = Workflow()
    wf.add("latent", "EmptyLatentImage", width=16384, height=16384, batch_size=4096)
    wf.add("decode", "VAEDecode", samples="latent", vae="ckpt.VAE")
    wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=CKPT)
    wf.add("save", "SaveImage", images="decode", filename_prefix="x")
    refused(ex, wf, "latent", "EmptyLatentImage", "width 16384 x height 16384 x batch_size 4096 makes a latent "
            "of 256 GiB, which exceeds the limit tensor_bytes = 8 GiB")
    wf = Workflow()
    wf.add("img", "EmptyImage", width=16384, height=16384, batch_size=4096, color=0)
    wf.add("save", "SaveImage", images="img", filename_prefix="x")
    refused(ex, wf, "img", "EmptyImage", "width 16384 x height 16384 x batch_size 4096 makes an image of 12 TiB, "
            "which exceeds the limit tensor_bytes = 8 GiB")


def tiny_batch(wf: Workflow, node_id: str = "img", batch: int = 4096, size: int = 1) -> None:
    """A batch of ``batch`` images of size x size pixels (4096 1x1 images are 48 KiB)."""
    wf.add(node_id, "EmptyImage", width=size, height=size, batch_size=batch, color=0x808080)


def test_upscale_pad_blend_and_composite_refuse_a_batch_of_tiny_images_made_huge(ex):
    cases = [
        ("ImageScale", dict(upscale_method="nearest-exact", width=16384, height=16384, crop="disabled"),
         "width 16384 x height 16384 for a batch of 4096 makes an image of 12 TiB"),
        ("ImagePadForOutpaint", dict(left=16384, top=16384, right=16384, bottom=16384, feathering=40),
         "left 16384 + right 16384 and top 16384 + bottom 16384 around a batch of 4096 of 1 x 1 makes an image "
         "of 48 TiB"),
    ]
    for class_type, inputs, message in cases:
        wf = Workflow()
        tiny_batch(wf)
        wf.add("node", class_type, image="img", **inputs)
        wf.add("save", "SaveImage", images="node.0", filename_prefix="x")
        refused(ex, wf, "node", class_type, message + ", which exceeds the limit tensor_bytes = 8 GiB")
    wf = Workflow()
    tiny_batch(wf, "many")
    tiny_batch(wf, "one", batch=1, size=1024)  # 12 MiB
    wf.add("blend", "ImageBlend", image1="one", image2="many", blend_factor=0.5, blend_mode="normal")
    wf.add("save", "SaveImage", images="blend", filename_prefix="x")
    refused(ex, wf, "blend", "ImageBlend", "image2 resized to image1's size for a batch of 4096 makes an image of "
            "48 GiB, which exceeds the limit tensor_bytes = 8 GiB")
    wf.add("comp", "ImageCompositeMasked", destination="many", source="one", x=0, y=0, resize_source=False)
    wf.set("save.images", "comp")
    refused(ex, wf, "comp", "ImageCompositeMasked", "a source of 1024 x 1024 for a destination batch of 4096 makes "
            "a source batch of 48 GiB, which exceeds the limit tensor_bytes = 8 GiB")


def test_latent_upscale_of_a_batch_of_tiny_latents(ex):
    wf = Workflow()
    wf.add("latent", "EmptyLatentImage", width=64, height=64, batch_size=4096)  # 4 MiB
    wf.add("up", "LatentUpscale", samples="latent", upscale_method="bislerp", width=16384, height=16384,
           crop="disabled")
    refused(ex, wf, "up", "LatentUpscale", "width 16384 x height 16384 for a batch of 4096 makes a latent of "
            "256 GiB, which exceeds the limit tensor_bytes = 8 GiB", targets=["up"])


def test_nodes_whose_growth_is_bounded_hold_a_lowered_limit(ex, monkeypatch):
    # Scale-by (8x a side), repeat (64x), mask-to-image (3x) and VAE decode (48x) cannot pass
    # 8 GiB from an input small enough for a test, so the limit is lowered to show each check.
    set_limit(monkeypatch, "tensor_bytes", 2 * MiB)
    cases = [
        ("EmptyImage", dict(width=128, height=128, batch_size=1, color=0), "ImageScaleBy",
         dict(image="src", upscale_method="bilinear", scale_by=4.0),
         "scale_by 4.0 (128 x 128 to 512 x 512) for a batch of 1 makes an image of 3 MiB"),
        ("EmptyLatentImage", dict(width=256, height=256, batch_size=4), "RepeatLatentBatch",
         dict(samples="src", amount=64), "amount 64 x a batch of 4 makes a latent of 4 MiB"),
        ("EmptyLatentImage", dict(width=512, height=512, batch_size=1), "LatentUpscaleBy",
         dict(samples="src", upscale_method="nearest-exact", scale_by=8.0),
         "scale_by 8.0 (512 x 512 to 4096 x 4096 pixels) for a batch of 1 makes a latent of 4 MiB"),
        ("SolidMask", dict(value=1.0, width=512, height=512), "MaskToImage", dict(mask="src"),
         "a mask batch of 1 of 512 x 512 makes an image of 3 MiB"),
        ("EmptyLatentImage", dict(width=512, height=512, batch_size=1), "VAEDecode",
         dict(samples="src", vae="ckpt.VAE"),
         "a latent batch of 1 of 64 x 64 (decoded 8x larger) makes an image of 3 MiB"),
        ("EmptyImage", dict(width=1, height=1, batch_size=1, color=0), "SolidMask",
         dict(value=0.5, width=1024, height=1024), "width 1024 x height 1024 makes a mask of 4 MiB"),
    ]
    for src_type, src_inputs, class_type, inputs, message in cases:
        wf = Workflow()
        wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=CKPT)
        wf.add("src", src_type, **src_inputs)
        wf.add("node", class_type, **inputs)
        refused(ex, wf, "node", class_type, message + ", which exceeds the limit tensor_bytes = 2 MiB",
                targets=["node"])


def test_a_tensor_of_exactly_the_limit_is_made_and_normal_sizes_run(ex, env, monkeypatch):
    set_limit(monkeypatch, "tensor_bytes", 1 * 4 * 64 * 64 * 4)  # EmptyLatentImage 512 x 512, batch 1
    wf = Workflow()
    wf.add("latent", "EmptyLatentImage", width=512, height=512, batch_size=1)
    assert ex.run(wf, targets=["latent"]).get("latent")["samples"].shape == (1, 4, 64, 64)
    wf.set("latent.width", 520)
    refused(ex, wf, "latent", "EmptyLatentImage", "width 520 x height 512 x batch_size 1 makes a latent of 65 KiB, "
            "which exceeds the limit tensor_bytes = 64 KiB", targets=["latent"])
    monkeypatch.undo()
    wf = Workflow()
    tiny_batch(wf, batch=4, size=16)
    wf.add("big", "ImageScale", image="img", upscale_method="bilinear", width=64, height=48, crop="disabled")
    wf.add("pad", "ImagePadForOutpaint", image="big", left=8, top=0, right=8, bottom=16, feathering=4)
    wf.add("comp", "ImageCompositeMasked", destination="pad.0", source="img", x=4, y=4, resize_source=False,
           mask="pad.1")
    wf.add("save", "SaveImage", images="comp", filename_prefix="ok")
    ex.run(wf)
    assert sorted(p.name for p in env.output_dir.iterdir()) == [f"ok_0000{i}_.png" for i in range(1, 5)]
    with Image.open(env.output_dir / "ok_00001_.png") as saved:
        assert saved.size == (80, 64)  # 64 x 48 padded by 8 + 8 and 0 + 16
        assert saved.getpixel((0, 0)) == (127, 127, 127)  # the grey padding, 0.5
        assert saved.getpixel((40, 30)) == (128, 128, 128)  # the scaled 0x808080 image


def test_a_batch_of_small_masks_resized_to_large_pixels_or_latents(ex, env):
    # A 600-frame GIF of one pixel gives 600 masks of 64 x 64 (10 MB); resized to 2048 x 2048
    # pixels for inpainting, or to a 2048 x 2048 latent for sampling, they would be many GiB.
    (env.input_dir / "masks.gif").write_bytes(gif(1, 1, 600))
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=CKPT)
    wf.add("masks", "LoadImage", image="masks.gif")
    tiny_batch(wf, batch=1, size=2048)  # 48 MiB
    wf.add("inpaint", "VAEEncodeForInpaint", pixels="img", vae=ck.VAE, mask="masks.1", grow_mask_by=6)
    refused(ex, wf, "inpaint", "VAEEncodeForInpaint", "a mask resized to the pixels' 2048 x 2048 for a batch of 600 "
            "makes a mask of 9.4 GiB, which exceeds the limit tensor_bytes = 8 GiB", targets=["inpaint"])
    wf.add("latent", "EmptyLatentImage", width=16384, height=16384, batch_size=1)  # 64 MiB
    wf.add("noised", "SetLatentNoiseMask", samples="latent", mask="masks.1")
    wf.add("text", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("k", "KSampler", model=ck.MODEL, seed=1, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
           positive="text", negative="text", latent_image="noised", denoise=1.0)
    refused(ex, wf, "k", "KSampler", "a noise_mask batch of 600 resized to a latent batch of 1 of 2048 x 2048 makes "
            "a noise mask of 37.5 GiB, which exceeds the limit tensor_bytes = 8 GiB", targets=["k"])
