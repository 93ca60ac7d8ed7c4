"""The everyday latent nodes of issue 16 (latentgraph/nodes/latent_ops.py) against ComfyUI 0.3.64:
the oracle prompt tests/fixtures/comfy_reference/everyday/latent_ops_prompt.json runs here on the
same committed .latent inputs, each SaveLatent file is read back and compared with what ComfyUI
saved; then edge cases, errors and the node definitions (object_info_everyday.json)."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, ValidationError
from latentgraph.nodes import create_registry
from latentgraph.nodes.latent_ops import (LatentAdd, LatentBatch, LatentBatchSeedBehavior, LatentBlend,
                                          LatentCompositeMasked, LatentCrop, LatentInterpolate, LatentRotate,
                                          check_latent_file)
from latentgraph.nodes.images_extra import (ImageBatch, ImageColorToMask, ImageScaleToMaxDimension, ImageSharpen,
                                             JoinImageWithAlpha, MaskComposite, RepeatImageBatch,
                                             SplitImageWithAlpha)
from latentgraph.nodes.imageio import tensor_to_pil
from conftest import FIXTURES
from parity import as_latentgraph, saved_latents, tiny_env
from test_node_definitions import FLAGS, normalise

REF = FIXTURES / "comfy_reference" / "everyday"
PROMPT = json.loads((REF / "latent_ops_prompt.json").read_text())
LATENTS = load_file(str(REF / "latent_ops_ref.safetensors"))
THEIRS = json.loads((FIXTURES / "comfy_reference" / "object_info_everyday.json").read_text())["nodes"]
INPUTS = ("lgI_a.latent", "lgI_b.latent", "lgI_c.latent", "lgI_old.latent", "lgI_mask.png")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("everyday")
    (root / "in").mkdir()
    for name in INPUTS:
        shutil.copy(REF / name, root / "in" / name)
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


@pytest.fixture(scope="module")
def saved(env):
    """The oracle prompt run here: {SaveLatent prefix: the .latent file it wrote}."""
    run = Executor(create_registry(), env).run(PROMPT)
    files = {}
    for nid, node in PROMPT.items():
        if node["class_type"] == "SaveLatent":
            (entry,) = run.outputs[nid]["latents"]
            assert entry["subfolder"] == "lgI_everyday" and entry["type"] == "output"
            files[node["inputs"]["filename_prefix"].split("/")[1]] = env.output_dir / "lgI_everyday" / entry["filename"]
    return files


def test_the_reference_holds_every_saved_latent(saved):
    assert sorted(saved) == sorted(LATENTS) and len(LATENTS) == 15
    assert all(path.name.endswith("_00001_.latent") for path in saved.values())


@pytest.mark.parametrize("name", sorted(LATENTS))
def test_latent_matches_comfyui(name, saved):
    ours = load_file(str(saved[name]))
    assert sorted(ours) == ["latent_format_version_0", "latent_tensor"]
    out, ref = ours["latent_tensor"], LATENTS[name]
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"


def test_pure_moves_are_exact(saved):
    """Flips, rotations, crops and loads move values without arithmetic: bit for bit."""
    for name in ("flip_x", "flip_y", "rotate90", "rotate270", "crop", "crop_clamped", "multiply"):
        assert torch.equal(load_file(str(saved[name]))["latent_tensor"], LATENTS[name]), name


def test_save_latent_writes_comfyuis_format(saved, env):
    with safe_open(str(saved["add"]), "pt") as fh:
        meta = fh.metadata()
        assert fh.get_tensor("latent_format_version_0").shape == (0,)
    assert list(meta) == ["prompt"]
    written = json.loads(meta["prompt"])  # the API prompt as the executor holds it (with _meta titles)
    assert {nid: (n["class_type"], n["inputs"]) for nid, n in written.items()} == {
        nid: (n["class_type"], n["inputs"]) for nid, n in PROMPT.items()}
    # the counter continues past the files already there, as ComfyUI's does
    reg = create_registry()
    again = Executor(reg, env).run({"1": PROMPT["1"], "2": {"class_type": "SaveLatent", "inputs": {
        "samples": ["1", 0], "filename_prefix": "lgI_everyday/add"}}})
    assert again.outputs["2"]["latents"][0]["filename"] == "add_00002_.latent"


def test_old_format_latent_is_unscaled():
    """A file without latent_format_version_0 holds samples x 0.18215 (ComfyUI before 2023)."""
    raw = load_file(str(REF / "lgI_old.latent"))["latent_tensor"]
    assert torch.allclose(LATENTS["old_format"], raw / 0.18215, rtol=1e-6, atol=0)


def _lat(*shape, seed=0, **extra):
    return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed)), **extra}


def test_batch_index_bookkeeping():
    a, b = _lat(2, 4, 8, 8, batch_index=[5, 6]), _lat(1, 4, 8, 8)
    assert LatentBatch(samples1=a, samples2=b)["batch_index"] == [5, 6, 0]
    assert LatentBatchSeedBehavior(samples=a, seed_behavior="fixed")["batch_index"] == [5, 5]
    assert LatentBatchSeedBehavior(samples=_lat(3, 4, 8, 8), seed_behavior="fixed")["batch_index"] == [0, 0, 0]
    rnd = LatentBatchSeedBehavior(samples=a, seed_behavior="random")
    assert "batch_index" not in rnd and a["batch_index"] == [5, 6]  # the input is never changed


def test_add_cycles_and_cuts_the_batch():
    a, b = _lat(3, 4, 8, 8), _lat(2, 4, 8, 8, seed=1)
    out = LatentAdd(samples1=a, samples2=b)["samples"]
    assert torch.equal(out[2], a["samples"][2] + b["samples"][0])
    short = LatentAdd(samples1=_lat(1, 4, 8, 8), samples2=b)["samples"]
    assert short.shape == (1, 4, 8, 8)


def test_interpolate_handles_zero_vectors_and_batches():
    zero = {"samples": torch.zeros(2, 4, 8, 8)}
    b = _lat(2, 4, 8, 8)
    assert torch.equal(LatentInterpolate(samples1=zero, samples2=zero, ratio=0.5)["samples"], zero["samples"])
    # ratio 0 is samples2 itself, per item (ComfyUI's broadcast fails for a batch of 2)
    out = LatentInterpolate(samples1=_lat(2, 4, 8, 8, seed=3), samples2=b, ratio=0.0)["samples"]
    assert torch.allclose(out, b["samples"], atol=1e-6)


def test_mismatched_latents_are_named():
    with pytest.raises(ValueError, match=r"LatentAdd: latents of shape \(1, 16, 8, 8\) and \(1, 4, 8, 8\) have "
                                         r"different channels"):
        LatentAdd(samples1=_lat(1, 4, 8, 8), samples2=_lat(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"LatentBlend: samples2 of shape \(2, 4, 4, 4\) cannot blend"):
        LatentBlend(samples1=_lat(1, 4, 8, 8), samples2=_lat(2, 4, 4, 4), blend_factor=0.5)
    with pytest.raises(ValueError, match="LatentCompositeMasked: source"):
        LatentCompositeMasked(destination=_lat(1, 4, 8, 8), source=_lat(1, 16, 8, 8), x=0, y=0,
                              resize_source=False)


def test_crop_of_a_small_latent_starts_at_zero():
    s = _lat(1, 4, 4, 6)
    out = LatentCrop(samples=s, width=64, height=64, x=8, y=8)["samples"]
    assert torch.equal(out, s["samples"][..., :4, :6])


def test_rotate_none_is_identity_and_270_undoes_90():
    s = _lat(1, 4, 6, 5)
    assert torch.equal(LatentRotate(samples=s, rotation="none")["samples"], s["samples"])
    turned = LatentRotate(samples=s, rotation="90 degrees")
    assert torch.equal(LatentRotate(samples=turned, rotation="270 degrees")["samples"], s["samples"])


def test_batch_budget_is_checked_before_allocating():
    big = {"samples": torch.zeros(1, 4, 64, 64).expand(2**17, 4, 64, 64)}  # a view: no memory
    with pytest.raises(ValueError, match=r"LatentBatch of 131072 \+ 131072 items makes a latent of 16 GiB, "
                                         r"which exceeds the limit tensor_bytes = 8 GiB"):
        LatentBatch(samples1=big, samples2=big)


def test_load_latent_refuses_bad_files(tmp_path):
    not_st = tmp_path / "x.latent"
    not_st.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=r"latent file 'x.latent' is not a safetensors file"):
        check_latent_file(not_st, "x.latent")
    other = tmp_path / "o.latent"
    save_file({"samples": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match=r"latent file 'o.latent' holds no latent_tensor \(keys: samples\)"):
        check_latent_file(other, "o.latent")
    flat = tmp_path / "f.latent"
    save_file({"latent_tensor": torch.zeros(3)}, str(flat))
    with pytest.raises(ValueError, match=r"latent_tensor has shape \[3\]; a latent has 4 or 5 dimensions"):
        check_latent_file(flat, "f.latent")
    huge = tmp_path / "h.latent"  # a header that claims 4 GiB of data the file does not hold
    header = json.dumps({"latent_tensor": {"dtype": "F32", "shape": [4096, 4, 512, 512],
                                           "data_offsets": [0, 16 * 2**30]}}).encode()
    huge.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match=r"latent file 'h.latent' with latent_tensor \[4096, 4, 512, 512\] "
                                         r"makes a latent of 16 GiB, which exceeds the limit tensor_bytes = 8 GiB"):
        check_latent_file(huge, "h.latent")


def test_load_latent_validation_names_the_file(env):
    prompt = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "missing.latent"}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(ValidationError) as info:
        Executor(create_registry(), env).run(prompt)
    assert "Invalid latent file: missing.latent" in str(info.value)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty_input")
    return create_registry().object_info(Environment(input_dir=empty, models_dir=empty, device="cpu"))


@pytest.mark.parametrize("name", sorted(THEIRS))
def test_node_is_declared_as_in_comfyui(name, ours):
    theirs, mine = THEIRS[name], ours[name]
    for field in ("category", "python_module", "output", "output_name", "output_is_list"):
        assert mine[field] == theirs[field], f"{name}.{field}"
    assert mine["display_name"] == (theirs["display_name"] or name)
    for flag in FLAGS:
        assert bool(mine.get(flag)) == bool(theirs.get(flag)), f"{name}.{flag}"
    for group in ("required", "optional"):
        assert mine["input_order"].get(group, []) == theirs["input_order"].get(group, []), f"{name} {group}"
        for inp, spec in theirs["input"].get(group, {}).items():
            assert normalise(mine["input"][group][inp]) == normalise(spec), f"{name}.{inp}"


# ---- image and mask nodes (latentgraph/nodes/images_extra.py) ----

IMAGE_PROMPT = json.loads((REF / "image_ops_prompt.json").read_text())
PNGS = load_file(str(REF / "image_ops_ref.safetensors"))
# 8-bit outputs of float maths: a value on a rounding boundary may land one step away
INEXACT = {"sharpen", "sharpen_strong", "max_dim_bilinear", "max_dim_area", "blur"}


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    """The image prompt run here: {SaveImage prefix: its PNGs decoded, uint8 (N, H, W, C)}."""
    root = tmp_path_factory.mktemp("everyday_images")
    (root / "in").mkdir()
    for name in ("lgI_img.png", "lgI_img2.png"):
        shutil.copy(REF / name, root / "in" / name)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    run = Executor(create_registry(), env).run(IMAGE_PROMPT)
    out = {}
    for nid, node in IMAGE_PROMPT.items():
        if node["class_type"] == "SaveImage":
            name = node["inputs"]["filename_prefix"].split("/")[1]
            files = [env.output_dir / "lgI_everyday" / e["filename"] for e in run.outputs[nid]["images"]]
            out[name] = torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in files]))
    return out


def test_the_image_reference_holds_every_saved_image(pngs):
    assert sorted(pngs) == sorted(PNGS) and len(PNGS) == 26


@pytest.mark.parametrize("name", sorted(PNGS))
def test_image_matches_comfyui(name, pngs):
    ours, ref = pngs[name], PNGS[name]
    assert ours.shape == ref.shape, name
    diff = (ours.int() - ref.int()).abs()
    if name in INEXACT:
        assert diff.max().item() <= 1, f"{name}: {int(diff.max())} steps off"
    else:
        assert torch.equal(ours, ref), f"{name}: {int((diff > 0).sum())} values differ"


def test_mask_composite_edges():
    dest, src = torch.full((1, 4, 4), 0.5), torch.ones(1, 3, 3)
    assert torch.equal(MaskComposite(destination=dest, source=src, x=9, y=0, operation="add"), dest)
    added = MaskComposite(destination=dest, source=src, x=2, y=3, operation="add")
    assert added[0, 3, 2:].tolist() == [1.0, 1.0] and added[0, 2].tolist() == [0.5] * 4
    sub = MaskComposite(destination=dest, source=src, x=0, y=0, operation="subtract")
    assert sub[0, 0, 0].item() == 0.0  # clamped at 0
    with pytest.raises(ValueError, match="MaskComposite: a source batch of 3 and a destination batch of 2"):
        MaskComposite(destination=torch.zeros(2, 4, 4), source=torch.zeros(3, 4, 4), x=0, y=0, operation="add")


def test_image_batch_budget_and_channels():
    big = torch.zeros(1, 512, 512, 3).expand(4096, 512, 512, 3)  # a view: no memory
    with pytest.raises(ValueError, match=r"ImageBatch of 4096 \+ 4096 images makes an image of 24 GiB, "
                                         r"which exceeds the limit tensor_bytes = 8 GiB"):
        ImageBatch(image1=big, image2=big)
    with pytest.raises(ValueError, match="ImageBatch: image1 has 3 channels and image2 4"):
        ImageBatch(image1=torch.zeros(1, 4, 4, 3), image2=torch.zeros(1, 4, 4, 4))
    with pytest.raises(ValueError, match=r"amount 4096 x a batch of 1024 makes an image of 36 GiB"):
        RepeatImageBatch(image=torch.zeros(1, 24, 32, 3).expand(1024, 24, 32, 3), amount=4096)


def test_scale_to_max_dimension_sizes_and_zero():
    img = torch.rand(1, 30, 20, 3)
    assert ImageScaleToMaxDimension(image=img, upscale_method="nearest-exact", largest_size=45).shape == (1, 45, 30, 3)
    with pytest.raises(ValueError, match=r"largest_size 0 makes an image of 0 x 0 pixels"):
        ImageScaleToMaxDimension(image=img, upscale_method="area", largest_size=0)


def test_split_and_join_alpha_and_sharpen_identity():
    rgb = torch.rand(2, 5, 6, 3)
    image, mask = SplitImageWithAlpha(image=rgb)
    assert torch.equal(image, rgb) and torch.equal(mask, torch.zeros(2, 5, 6))
    joined = JoinImageWithAlpha(image=rgb, alpha=torch.full((1, 5, 6), 0.25))
    assert joined.shape == (1, 5, 6, 4) and torch.allclose(joined[..., 3], torch.full((1, 5, 6), 0.75))
    # alpha 0 leaves the image as it is; a 1-pixel image has no room to reflect: its edges repeat
    assert torch.allclose(ImageSharpen(image=rgb, sharpen_radius=2, sigma=1.0, alpha=0.0), rgb)
    assert ImageSharpen(image=torch.rand(1, 1, 1, 3), sharpen_radius=3, sigma=1.0, alpha=1.0).shape == (1, 1, 1, 3)


def test_image_color_to_mask_rounds_like_comfyui():
    img = torch.tensor([[[[0x33 / 255, 0x66 / 255, 0xCC / 255], [0.2 + 0.001, 0.4, 0.8], [0, 0, 0]]]])
    assert ImageColorToMask(image=img, color=0x3366CC).tolist() == [[[1.0, 1.0, 0.0]]]


# ---- InpaintModelConditioning (latentgraph/nodes/inpaint.py; the 9-channel concat in nodes/sd.py) ----

INPAINT_PROMPT = json.loads((REF / "inpaint_prompt.json").read_text())
INPAINT = load_file(str(REF / "inpaint_ref.safetensors"))


@pytest.fixture(scope="module")
def inpainted(tmp_path_factory):
    """The inpaint prompt run here on the tiny SD1 model (TinyCheckpointLoader as
    CheckpointLoaderSimple); {SaveLatent prefix: the latent it got}."""
    env = tiny_env(tmp_path_factory.mktemp("everyday_inpaint"))
    shutil.copy(REF / "lgI_img.png", env.input_dir / "lgI_img.png")
    prompt = as_latentgraph(INPAINT_PROMPT)
    return saved_latents(env, Executor(create_registry(), env).run(prompt), prompt)


@pytest.mark.parametrize("name", ["inpaint_latent", "inpaint_sampled", "inpaint_sampled_nomask"])
def test_inpaint_model_conditioning_matches_comfyui(name, inpainted):
    out, ref = inpainted[name], INPAINT[name]
    assert out.shape == ref.shape == (1, 4, 8, 8)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"


def test_inpaint_outputs_and_errors():
    from latentgraph.nodes.inpaint import InpaintModelConditioning

    class FakeVAE:  # encode_image is replaced below: only the pixels it gets matter
        vae, placement = None, None

    seen = []
    import latentgraph.nodes.inpaint as mod
    real = mod.encode_image
    mod.encode_image = lambda vae, pixels, placement: seen.append(pixels.clone()) or torch.zeros(1, 4, 1, 1)
    try:
        pixels = torch.full((1, 12, 10, 3), 0.9)
        mask = torch.zeros(1, 12, 10)
        mask[:, :6] = 1.0  # the top half is repainted
        pos, neg, latent = InpaintModelConditioning(positive=[[torch.zeros(1), {"a": 1}]], negative=[],
                                                    vae=FakeVAE(), pixels=pixels, mask=mask, noise_mask=False)
    finally:
        mod.encode_image = real
    masked, whole = seen
    assert masked.shape == (1, 8, 8, 3) and whole.shape == (1, 12, 10, 3)  # cropped at offsets 2 and 1
    assert masked[0, :4, :, 0].unique().tolist() == [0.5] and masked[0, 4:, :, 0].unique().tolist() == [0.8999999761581421]
    assert pos[0][1]["a"] == 1 and pos[0][1]["concat_mask"].shape == (1, 1, 8, 8) and neg == []
    assert "noise_mask" not in latent
    with pytest.raises(ValueError, match="InpaintModelConditioning: a batch of 2 masks for 1 images"):
        InpaintModelConditioning(positive=[], negative=[], vae=FakeVAE(), pixels=pixels,
                                 mask=torch.zeros(2, 12, 10), noise_mask=True)


def test_cond_concat_feeds_a_9_channel_unet_and_ignores_plain_ones():
    from types import SimpleNamespace

    from latentgraph.nodes.sd import cond_concat

    image = torch.randn(1, 4, 4, 6)
    mask = torch.zeros(1, 1, 32, 48)
    mask[..., :16, :] = 0.7
    opts = {"concat_latent_image": image, "concat_mask": mask}
    from latentgraph.sampling.schedule import LatentFormat

    sd1 = LatentFormat(0.18215)
    nine = SimpleNamespace(arch=SimpleNamespace(unet=SimpleNamespace(in_channels=9)), latent_format=sd1)
    out = cond_concat(nine, opts, torch.Size((2, 4, 4, 6)), torch.device("cpu"), None)
    assert out.shape == (2, 5, 4, 6)
    assert out[:, 0, :2].unique().tolist() == [1.0] and out[:, 0, 2:].unique().tolist() == [0.0]  # rounded
    assert torch.equal(out[1, 1:], image[0] * 0.18215)
    four = SimpleNamespace(arch=SimpleNamespace(unet=SimpleNamespace(in_channels=4)), latent_format=sd1)
    default = torch.ones(1)
    assert cond_concat(four, opts, torch.Size((2, 4, 4, 6)), torch.device("cpu"), default) is default
    assert cond_concat(nine, {}, torch.Size((2, 4, 4, 6)), torch.device("cpu"), default) is default


# ---- string nodes and PreviewAny (latentgraph/nodes/strings.py) ----

def test_string_nodes_values():
    from latentgraph.nodes import strings as s

    assert s.StringConcatenate(string_a="a", string_b="b", delimiter=", ") == "a, b"
    assert s.StringSubstring(string="hello world", start=-5, end=11) == "world"
    assert s.StringLength(string="héllo") == 5
    assert [s.CaseConverter(string="hello wORLD", mode=m) for m in ("UPPERCASE", "lowercase", "Capitalize",
                                                                   "Title Case")] == [
        "HELLO WORLD", "hello world", "Hello world", "Hello World"]
    assert [s.StringTrim(string=" \n x \t", mode=m) for m in ("Both", "Left", "Right")] == ["x", "x \t", " \n x"]
    assert s.StringReplace(string="a-b-c", find="-", replace="+") == "a+b+c"
    assert s.StringContains(string="Hello", substring="hell", case_sensitive=False) is True
    assert s.StringContains(string="Hello", substring="hell", case_sensitive=True) is False
    assert s.StringCompare(string_a="Photo.PNG", string_b=".png", mode="Ends With", case_sensitive=False) is True
    assert s.StringCompare(string_a="abc", string_b="ABC", mode="Equal", case_sensitive=True) is False


def test_regex_nodes_values_and_bad_patterns():
    from latentgraph.nodes import strings as s

    text = "cat=1\ndog=22\nCAT=333"
    assert s.RegexMatch(string=text, regex_pattern="^dog", case_insensitive=True, multiline=True, dotall=False)
    assert not s.RegexMatch(string=text, regex_pattern="^dog", case_insensitive=True, multiline=False, dotall=False)
    assert not s.RegexMatch(string=text, regex_pattern="(", case_insensitive=True, multiline=False, dotall=False)
    kw = dict(case_insensitive=True, multiline=False, dotall=False)
    assert s.RegexExtract(string=text, regex_pattern=r"cat=(\d+)", mode="All Matches", group_index=1, **kw) == "1\n333"
    assert s.RegexExtract(string=text, regex_pattern=r"(\w+)=(\d+)", mode="All Groups", group_index=2, **kw) == \
        "1\n22\n333"
    assert s.RegexExtract(string=text, regex_pattern=r"\d+", mode="First Match", group_index=1, **kw) == "1"
    assert s.RegexExtract(string=text, regex_pattern=r"(\w+)=", mode="First Group", group_index=2, **kw) == ""
    assert s.RegexExtract(string=text, regex_pattern="[", mode="First Match", group_index=1, **kw) == ""
    assert s.RegexReplace(string=text, regex_pattern=r"(\w+)=(\d+)", replace=r"\2:\1", count=2) == \
        "1:cat\n22:dog\nCAT=333"
    with pytest.raises(ValueError, match=r"RegexReplace: input 'regex_pattern' '\(' or input 'replace' is not a "
                                         r"valid regular expression: missing \), unterminated subpattern"):
        s.RegexReplace(string="x", regex_pattern="(", replace="")


def test_string_size_budget():
    from latentgraph.nodes import strings as s

    with pytest.raises(ValueError, match=r"StringReplace of 100,001 occurrences makes a string of 100,101,000 "
                                         r"characters, which exceeds the limit 100 x prompt_chars = 10,000,000"):
        s.StringReplace(string="x" * 100_000, find="", replace="y" * 1000)  # "" occurs 100,001 times


def test_preview_any_text(env):
    from latentgraph.nodes.strings import PreviewAny

    assert PreviewAny(source="hi").ui == {"text": ("hi",)}
    assert PreviewAny(source=1.5).ui == {"text": ("1.5",)}
    assert PreviewAny(source=None).ui == {"text": ("None",)}
    assert PreviewAny(source={"a": [1, 2]}).ui == {"text": ('{"a": [1, 2]}',)}
    assert PreviewAny(source=torch.tensor([1.0])).ui == {"text": ("tensor([1.])",)}
    prompt = {"1": {"class_type": "StringLength", "inputs": {"string": "four"}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}
    assert Executor(create_registry(), env).run(prompt).outputs["2"] == {"text": ["4"]}


# ---- Morphology and the rebatch nodes ----

MORPH_PROMPT = json.loads((REF / "morphology_prompt.json").read_text())
MORPH = load_file(str(REF / "morphology_ref.safetensors"))


def test_morphology_matches_comfyui(tmp_path):
    from latentgraph.nodes.imageio import pil_to_tensors
    from latentgraph.nodes.images_extra import Morphology

    image, _ = pil_to_tensors(Image.open(REF / "lgI_img2.png"))
    ops = {n["inputs"]["filename_prefix"].split("/")[1]: MORPH_PROMPT[n["inputs"]["images"][0]]["inputs"]
           for n in MORPH_PROMPT.values() if n["class_type"] == "SaveImage"}
    assert sorted(ops) == sorted(MORPH) and len(MORPH) == 7
    for name, inputs in ops.items():
        out = Morphology(image=image, operation=inputs["operation"], kernel_size=inputs["kernel_size"])
        ours = torch.from_numpy(np.asarray(tensor_to_pil(out[0]))[None].copy())
        assert torch.equal(ours, MORPH[name]), name


def test_morphology_budget():
    from latentgraph.nodes.images_extra import Morphology

    with pytest.raises(ValueError, match=r"Morphology with kernel_size 999 on 1 images of 1024 x 1024 makes a "
                                         r"neighbourhood tensor of 11,?.* which exceeds the limit tensor_bytes"):
        Morphology(image=torch.zeros(1, 1, 1, 3).expand(1, 1024, 1024, 3), operation="erode", kernel_size=999)


def test_rebatch_latents():
    from latentgraph.nodes.rebatch import RebatchLatents

    a, b = _lat(3, 4, 8, 8), _lat(2, 4, 8, 8, seed=1)
    mask = torch.zeros(1, 1, 64, 64)
    c = _lat(1, 4, 4, 4, seed=2, noise_mask=torch.zeros(1, 1, 16, 16))
    out = RebatchLatents(latents=[a, {**b, "noise_mask": mask}, c], batch_size=[2])
    assert [o["samples"].shape[0] for o in out] == [2, 2, 1, 1]
    assert [o["batch_index"] for o in out] == [[0, 1], [2, 3], [4], [5]]
    assert "noise_mask" not in out[0]  # all ones: dropped
    assert out[1]["noise_mask"][0].mean() == 1.0 and out[1]["noise_mask"][1].mean() == 0.0
    assert out[3]["noise_mask"].shape == (1, 1, 32, 32)  # resized to 8x the latent
    assert torch.equal(out[2]["samples"], b["samples"][1:])


def test_rebatch_images():
    from latentgraph.nodes.rebatch import RebatchImages

    out = RebatchImages(images=[torch.rand(3, 4, 4, 3), torch.rand(2, 4, 4, 3)], batch_size=[4])
    assert [o.shape[0] for o in out] == [4, 1]
    with pytest.raises(ValueError, match=r"RebatchImages: images 0 to 1 would share a batch but have different "
                                         r"sizes \[\(4, 4, 3\), \(5, 4, 3\)\]"):
        RebatchImages(images=[torch.rand(1, 4, 4, 3), torch.rand(1, 5, 4, 3)], batch_size=[2])


def test_rebatch_latents_in_a_graph_saves_each_batch(env):
    prompt = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "lgI_c.latent"}},
              "2": {"class_type": "RebatchLatents", "inputs": {"latents": ["1", 0], "batch_size": 1}},
              "3": {"class_type": "SaveLatent", "inputs": {"samples": ["2", 0], "filename_prefix": "rebatch/c"}}}
    run = Executor(create_registry(), env).run(prompt)
    names = [e["filename"] for e in run.outputs["3"]["latents"]]
    assert names == ["c_00001_.latent", "c_00002_.latent"]
    whole = load_file(str(REF / "lgI_c.latent"))["latent_tensor"]
    for i, name in enumerate(names):
        assert torch.equal(load_file(str(env.output_dir / "rebatch" / name))["latent_tensor"], whole[i:i + 1])


# ---- SaveAnimatedWEBP / SaveAnimatedPNG (latentgraph/nodes/animated.py) ----

def test_animated_saves_frames_and_metadata(env):
    frames = torch.stack([torch.full((6, 8, 3), v) for v in (0.0, 0.5, 1.0)])
    run_prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 1,
                                                               "color": 0}}}
    reg = create_registry()
    ctx_run = Executor(reg, env)
    webp = {**run_prompt, "2": {"class_type": "SaveAnimatedWEBP", "inputs": {
        "images": ["1", 0], "filename_prefix": "anim/w", "fps": 4.0, "lossless": True, "quality": 80,
        "method": "fastest"}}}
    out = ctx_run.run(webp, extra_data={"extra_pnginfo": {"workflow": {"a": 1}}}).outputs["2"]
    assert out == {"images": [{"filename": "w_00001_.webp", "subfolder": "anim", "type": "output"}],
                   "animated": [False]}
    with Image.open(env.output_dir / "anim" / "w_00001_.webp") as img:
        exif = img.getexif()
        assert exif[0x0110].startswith('prompt:{"1": ') and exif[0x010F] == 'workflow:{"a": 1}'
    from latentgraph.nodes.animated import SaveAnimatedPNG, SaveAnimatedWEBP

    class Ctx:
        pass

    ctx = Ctx()
    ctx.env = env
    res = SaveAnimatedPNG(images=frames, filename_prefix="anim/p", fps=4.0, compress_level=4, prompt={"x": 1},
                          extra_pnginfo=None, ctx=ctx)
    assert res.ui["animated"] == (True,)
    with Image.open(env.output_dir / "anim" / res.ui["images"][0]["filename"]) as img:
        assert img.n_frames == 3 and img.info["duration"] == 250
        img.seek(2)
        assert np.asarray(img.convert("RGB"))[0, 0].tolist() == [255, 255, 255]
    raw = (env.output_dir / "anim" / res.ui["images"][0]["filename"]).read_bytes()
    assert b"comfprompt\x00{\"x\": 1}" in raw and raw.index(b"comf") > raw.index(b"IDAT")
    res = SaveAnimatedWEBP(images=frames, filename_prefix="anim/w", fps=3.0, lossless=True, quality=80,
                           method="default", prompt=None, extra_pnginfo=None, ctx=ctx)
    assert res.ui["images"][0]["filename"] == "w_00002_.webp" and res.ui["animated"] == (True,)
    with Image.open(env.output_dir / "anim" / "w_00002_.webp") as img:
        assert img.n_frames == 3
        img.seek(1)
        assert np.asarray(img.convert("RGB"))[0, 0].tolist() == [127, 127, 127]  # lossless, truncated like ComfyUI
    with pytest.raises(ValueError, match="an animation needs at least one image; the batch is empty"):
        SaveAnimatedPNG(images=torch.zeros(0, 4, 4, 3), filename_prefix="anim/e", fps=1.0, compress_level=1,
                        prompt=None, extra_pnginfo=None, ctx=ctx)


QUANT_PROMPT = json.loads((REF / "quantize_prompt.json").read_text())
QUANT = load_file(str(REF / "quantize_ref.safetensors"))


def test_image_quantize_matches_comfyui():
    from latentgraph.nodes.imageio import pil_to_tensors
    from latentgraph.nodes.images_extra import ImageQuantize

    sources = {nid: pil_to_tensors(Image.open(REF / n["inputs"]["image"]))[0]
               for nid, n in QUANT_PROMPT.items() if n["class_type"] == "LoadImage"}
    cases = {n["inputs"]["filename_prefix"].split("/")[1]: QUANT_PROMPT[n["inputs"]["images"][0]]["inputs"]
             for n in QUANT_PROMPT.values() if n["class_type"] == "SaveImage"}
    assert sorted(cases) == sorted(QUANT) and len(QUANT) == 7
    for name, inputs in cases.items():
        out = ImageQuantize(image=sources[inputs["image"][0]], colors=inputs["colors"], dither=inputs["dither"])
        ours = torch.from_numpy(np.asarray(tensor_to_pil(out[0]))[None].copy())
        assert torch.equal(ours, QUANT[name]), name
        assert len(torch.unique(ours.reshape(-1, 3), dim=0)) <= inputs["colors"], name


def test_bayer_matrix_levels():
    from latentgraph.nodes.images_extra import bayer_matrix

    assert bayer_matrix(1).tolist() == [[-0.375, 0.125], [0.375, -0.125]]
    m = bayer_matrix(3)
    assert m.shape == (8, 8) and len(np.unique(m)) == 64 and abs(float(m.mean())) < 1e-6
