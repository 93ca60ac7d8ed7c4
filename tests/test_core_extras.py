"""The small core nodes of latentgraph/nodes/core_extras.py (images, latents, masks) against
ComfyUI 0.3.64: the API prompt ComfyUI ran is tests/fixtures/comfy_reference/core_extras/
images_prompt.json and what it saved is images_ref.safetensors there (README.md in that folder).
Then unit checks of values, edge cases and errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentgraph.graph import Environment, Executor
from latentgraph.nodes import create_registry
from latentgraph.nodes.core_extras import (
    GetImageSize, ImageAddNoise, ImageRGBToYUV, ImageYUVToRGB, LatentConcat, LatentCut, PorterDuffImageComposite,
    ResizeAndPadImage, porter_duff)
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
HERE = REF / "core_extras"
IMAGES_PROMPT = json.loads((HERE / "images_prompt.json").read_text())
IMAGES_REF = load_file(str(HERE / "images_ref.safetensors"))
INPUTS = ("lgI_img.png", "lgI_img2.png", "lgI_a.latent", "lgI_c.latent")  # in ../everyday
# 8-bit outputs of float maths where a value on a rounding boundary may land one step away
INEXACT_PREFIXES = ("pad_", "pd_", "mask_pd_", "yuv_")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The image prompt run here: {prefix: PNGs decoded uint8 (N, H, W, C) | latent samples}."""
    root = tmp_path_factory.mktemp("core_extras")
    (root / "in").mkdir()
    for name in INPUTS:
        shutil.copy(REF / "everyday" / name, root / "in" / name)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    run = Executor(create_registry(), env).run(IMAGES_PROMPT)
    out = {}
    for nid, node in IMAGES_PROMPT.items():
        name = node["inputs"].get("filename_prefix", "").split("/")[-1]
        if node["class_type"] == "SaveImage":
            files = [env.output_dir / "lgO" / e["filename"] for e in run.outputs[nid]["images"]]
            out[name] = torch.from_numpy(np.stack([np.asarray(Image.open(f)) for f in files]))
        elif node["class_type"] == "SaveLatent":
            saved = run.outputs[nid]["latents"][0]
            out[name] = load_file(str(env.output_dir / saved["subfolder"] / saved["filename"]))["latent_tensor"]
    return out


def test_the_reference_holds_every_output(outputs):
    assert sorted(outputs) == sorted(IMAGES_REF) and len(IMAGES_REF) == 59


@pytest.mark.parametrize("name", sorted(IMAGES_REF))
def test_output_matches_comfyui(name, outputs):
    ours, ref = outputs[name], IMAGES_REF[name]
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    if ref.dtype == torch.float32:  # latents: moved, not computed, so exactly equal
        assert torch.equal(ours, ref)
    elif name.startswith(INEXACT_PREFIXES):
        diff = (ours.int() - ref.int()).abs()
        assert diff.max() <= 1, f"max difference {diff.max()} steps"
        assert (diff > 0).float().mean() < 0.02  # a boundary case, not a shift
    else:
        assert torch.equal(ours, ref)


def test_prompt_cases_really_differ():
    # cases that would pass against a do-nothing node: the modes give distinct pictures,
    # and the noise is there
    pd = {name: IMAGES_REF[name] for name in IMAGES_REF if name.startswith("pd_")}
    assert len({bytes(t.numpy()) for t in pd.values()}) >= 14
    assert (IMAGES_REF["noise_0.5"].int() - IMAGES_REF["noise_0.2"].int()).abs().max() > 50
    assert IMAGES_REF["size"].shape == (2, 20, 24, 3)  # GetImageSize of the 2-image batch
    assert IMAGES_REF["size"][0, 0, 0].tolist() == [0x10, 0x20, 0x30]


# -- unit checks ------------------------------------------------------------------------------

def test_get_image_size_is_width_height_batch():
    assert GetImageSize(torch.zeros(3, 5, 7, 3)) == (7, 5, 3)


def test_image_add_noise_uses_the_seeded_cpu_generator_and_clamps():
    image = torch.full((1, 4, 4, 3), 0.5)
    out = ImageAddNoise(image, 7, 0.1)
    expected = 0.5 + 0.1 * torch.randn((1, 4, 4, 3), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, expected.clamp(0, 1), atol=0)
    assert torch.equal(ImageAddNoise(image, 7, 0.0), image)
    loud = ImageAddNoise(image, 7, 1.0)
    assert loud.min() == 0.0 and loud.max() == 1.0  # clamped both ways


def test_resize_and_pad_centres_on_the_padding_colour():
    image = torch.ones(1, 2, 4, 3) * 0.25  # 4 wide, 2 high
    out = ResizeAndPadImage(image, 8, 8, "black", "nearest-exact")
    assert out.shape == (1, 8, 8, 3)
    # scale 2: 8 x 4 pixels, 2 rows of padding above and below
    assert torch.equal(out[0, 2:6], torch.full((4, 8, 3), 0.25))
    assert out[0, :2].abs().sum() == 0 and out[0, 6:].abs().sum() == 0
    white = ResizeAndPadImage(image, 5, 5, "white", "area")
    # scale 1.25: 5 x 2 (2.5 truncated); top offset (5 - 2) // 2 = 1, one row above and two below
    assert torch.equal(white[0, 0], torch.ones(5, 3)) and torch.equal(white[0, 3:], torch.ones(2, 5, 3))
    assert torch.allclose(white[0, 1:3], torch.full((2, 5, 3), 0.25))


def test_resize_and_pad_refuses_a_picture_that_would_vanish():
    with pytest.raises(ValueError, match=r"a 1000x1 image fitted into 10x10 would be 10x0 pixels"):
        ResizeAndPadImage(torch.zeros(1, 1, 1000, 3), 10, 10, "white", "area")


def test_resize_and_pad_checks_the_budget_before_allocating():
    with pytest.raises(ValueError, match=r"target_width 16384 x target_height 16384 makes an image of .*tensor_bytes"):
        ResizeAndPadImage(torch.zeros(4096, 1, 1, 3), 16384, 16384, "white", "area")


def _latent(*shape, start=0.0):
    return {"samples": torch.arange(float(np.prod(shape))).reshape(shape) + start}


def test_latent_concat_orders_and_cycles_the_batch():
    a, b = _latent(2, 1, 2, 2), _latent(1, 1, 2, 3, start=100)
    out = LatentConcat(a, b, "x")["samples"]
    assert out.shape == (2, 1, 2, 5)
    assert torch.equal(out[1, :, :, 2:], b["samples"][0])  # b's one item repeated for a's second
    first = LatentConcat(a, b, "-x")["samples"]
    assert torch.equal(first[:, :, :, :3], b["samples"].expand(2, -1, -1, -1))
    assert LatentConcat(_latent(1, 1, 2, 2, 2), _latent(1, 1, 3, 2, 2), "t")["samples"].shape == (1, 1, 5, 2, 2)


def test_latent_concat_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"along 'x' every other side must match; got samples1 \(1, 1, 2, 2\) "
                                         r"and samples2 \(1, 1, 3, 2\)"):
        LatentConcat(_latent(1, 1, 2, 2), _latent(1, 1, 3, 2), "x")
    with pytest.raises(ValueError, match=r"dim '-t' needs latents with a t axis"):
        LatentConcat(_latent(1, 1, 2, 2), _latent(1, 1, 2, 2), "-t")


def test_latent_cut_clamps_as_comfyui():
    s = _latent(1, 1, 2, 6)
    assert LatentCut(s, "x", 2, 3)["samples"][0, 0, 0].tolist() == [2.0, 3.0, 4.0]
    assert LatentCut(s, "x", 9, 3)["samples"][0, 0, 0].tolist() == [5.0]  # start moves to the last
    assert LatentCut(s, "x", -2, 5)["samples"][0, 0, 0].tolist() == [4.0, 5.0]  # amount cut at the end
    assert LatentCut(s, "x", -99, 1)["samples"][0, 0, 0].tolist() == [0.0]
    assert LatentCut(s, "y", 1, 1)["samples"].shape == (1, 1, 1, 6)
    with pytest.raises(ValueError, match=r"dim 't' needs a latent with a t axis; got \(1, 1, 2, 6\)"):
        LatentCut(s, "t", 0, 1)  # an image latent has no frames (ComfyUI would cut its channels)
    assert LatentCut(_latent(1, 1, 4, 2, 2), "t", 1, 2)["samples"].shape == (1, 1, 2, 2, 2)


def test_yuv_known_colours_and_round_trip():
    rgb = torch.tensor([[[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]]])  # red, white
    y, u, v = ImageRGBToYUV(rgb)
    assert y.shape == rgb.shape and torch.equal(y[..., 0], y[..., 2])
    assert torch.allclose(y[0, 0, :, 0], torch.tensor([0.299, 1.0]))
    assert torch.allclose(u[0, 0, :, 0], torch.tensor([0.5 - 0.299 * 0.564, 0.5]))
    assert torch.allclose(v[0, 0, :, 0], torch.tensor([0.5 + 0.701 * 0.713, 0.5]))
    assert torch.allclose(ImageYUVToRGB(y, u, v), rgb, atol=1e-6)  # the exact inverse
    assert ImageYUVToRGB(y, torch.zeros_like(u), v).min() == 0.0  # clamped
    with pytest.raises(ValueError, match=r"ImageYUVToRGB: Y \(1, 1, 2, 3\), U \(1, 2, 2, 3\)"):
        ImageYUVToRGB(y, torch.zeros(1, 2, 2, 3), v)


def test_porter_duff_src_over_and_alpha_as_mask():
    src, dst = torch.tensor([[[1.0, 0.0, 0.0]]]), torch.tensor([[[0.0, 0.0, 1.0]]])
    # MASK 0.5 = alpha 0.5 over an opaque destination
    image, mask = porter_duff(src, torch.full((1, 1, 1), 0.5), dst, torch.zeros(1, 1, 1), "SRC_OVER")
    assert torch.allclose(image, torch.tensor([[[0.5, 0.0, 0.5]]])) and torch.allclose(mask, torch.zeros(1, 1, 1))
    image, mask = porter_duff(src, torch.ones(1, 1, 1), dst, torch.ones(1, 1, 1), "XOR")  # both transparent
    assert torch.equal(image, torch.zeros(1, 1, 3)) and torch.equal(mask, torch.ones(1, 1, 1))
    with pytest.raises(ValueError, match="unknown mode 'NOPE'"):
        porter_duff(src, mask, dst, mask, "NOPE")


def test_porter_duff_node_batch_and_channel_errors():
    image, mask = PorterDuffImageComposite(torch.rand(3, 4, 4, 3), torch.zeros(2, 4, 4), torch.rand(3, 4, 4, 3),
                                           torch.zeros(3, 4, 4), "SRC")
    assert image.shape == (2, 4, 4, 3) and mask.shape == (2, 4, 4)  # the shortest batch
    with pytest.raises(ValueError, match="source has 4 channels and destination 3"):
        PorterDuffImageComposite(torch.rand(1, 4, 4, 4), torch.zeros(1, 4, 4), torch.rand(1, 4, 4, 3),
                                 torch.zeros(1, 4, 4), "SRC")


# -- MaskPreview and LoadImageOutput through the executor -------------------------------------

def _env(tmp_path):
    return Environment(output_dir=tmp_path / "out", input_dir=tmp_path / "in", temp_dir=tmp_path / "tmp",
                       models_dir=tmp_path / "models", device="cpu")


def test_mask_preview_writes_grey_pngs_to_temp(tmp_path):
    env = _env(tmp_path)
    prompt = {"m": {"class_type": "SolidMask", "inputs": {"value": 0.6, "width": 5, "height": 3}},
              "p": {"class_type": "MaskPreview", "inputs": {"mask": ["m", 0]}}}
    run = Executor(create_registry(), env).run(prompt)
    [saved] = run.outputs["p"]["images"]
    assert saved["type"] == "temp"
    pixels = np.asarray(Image.open(env.temp_dir / saved["subfolder"] / saved["filename"]))
    assert pixels.shape == (3, 5, 3) and (pixels == 153).all()  # 0.6 * 255


def test_load_image_output_reads_the_output_folder(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "out" / "sub").mkdir(parents=True)
    Image.new("RGB", (3, 2), (255, 0, 0)).save(tmp_path / "out" / "sub" / "r.png")
    registry = create_registry()
    info = registry.object_info(env)["LoadImageOutput"]
    assert info["input"]["required"]["image"] == [["sub/r.png [output]"], {"image_folder": "output",
                                                                           "image_upload": True}]
    assert info["experimental"] is True
    for name in ("sub/r.png [output]", "sub/r.png"):
        prompt = {"l": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
                  "s": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
        run = Executor(registry, env).run(prompt, targets=["l"])
        image, mask = run.get("l", 0), run.get("l", 1)
        assert image.shape == (1, 2, 3, 3) and torch.equal(image[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
        assert mask.shape == (1, 64, 64) and mask.abs().sum() == 0  # no alpha: 64x64 zeros, as LoadImage


@pytest.mark.parametrize("name", ["../secret.png", "/etc/passwd", "missing.png [output]", "x.png [input]"])
def test_load_image_output_refuses_paths_out_of_the_folder_and_missing_files(tmp_path, name):
    from latentgraph.graph import ValidationError

    env = _env(tmp_path)
    (tmp_path / "out").mkdir()
    prompt = {"l": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
              "s": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
    with pytest.raises(ValidationError) as info:
        Executor(create_registry(), env).run(prompt)
    assert f"Invalid image file: {name} (looked in {env.output_dir})" in info.value.format()


def test_load_image_output_names_a_file_that_is_not_an_image(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "fake.png").write_bytes(b"not a png")
    prompt = {"l": {"class_type": "LoadImageOutput", "inputs": {"image": "fake.png [output]"}},
              "s": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}
    with pytest.raises(Exception, match=r"cannot read image 'fake.png \[output\]'"):
        Executor(create_registry(), env).run(prompt)


# -- the guidance and attention patches (latentgraph/nodes/guidance_patches.py) -----------------
# patches_prompt.json: the tiny SD1 checkpoint, one KSampler per patch (seed 42, 5 steps, cfg 5,
# euler/normal), each latent in patches_ref.safetensors.

PATCHES_PROMPT = json.loads((HERE / "patches_prompt.json").read_text())
PATCHES_REF = load_file(str(HERE / "patches_ref.safetensors"))
PATCHED = ["cfg_norm", "eps_scaling", "mahiro", "tcfg", "fresca", "perp_neg", "unet_self", "unet_cross",
           "unet_temporal", "clip_attn"]


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    """Every KSampler of the patches prompt, run once here."""
    from parity import as_latentgraph, tiny_env

    env = tiny_env(tmp_path_factory.mktemp("core_extras_patches"))
    targets = [nid for nid, n in PATCHES_PROMPT.items() if n["class_type"] == "KSampler"]
    run = Executor(create_registry(), env).run(as_latentgraph(PATCHES_PROMPT, drop=("SaveLatent",)), targets=targets)
    return {t[: -len("_k")]: run.get(t)["samples"] for t in targets}


def _close(out: torch.Tensor, ref: torch.Tensor, tolerance: float = 1e-4) -> None:
    """The issue's tolerance: within 1e-4 of the reference's largest magnitude."""
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < tolerance, f"relative error {err:.3g}"


def test_the_patches_prompt_uses_every_patch_node():
    classes = {n["class_type"] for n in PATCHES_PROMPT.values()}
    assert {"CFGNorm", "Epsilon Scaling", "Mahiro", "TCFG", "FreSca", "PerpNeg", "UNetSelfAttentionMultiply",
            "UNetCrossAttentionMultiply", "UNetTemporalAttentionMultiply", "CLIPAttentionMultiply"} <= classes
    assert sorted(PATCHES_REF) == sorted(PATCHED + ["base"])


@pytest.mark.parametrize("name", ["base"] + PATCHED)
def test_patched_sampling_matches_comfyui(patched, name):
    _close(patched[name], PATCHES_REF[name])
    if name != "base":  # and the patch really changed the result, by 10x the tolerance at least
        base = PATCHES_REF["base"]
        assert (PATCHES_REF[name] - base).abs().max() > 1e-3 * base.abs().max()


CFG1_PROMPT = json.loads((HERE / "patches_cfg1_prompt.json").read_text())
CFG1_REF = load_file(str(HERE / "patches_cfg1_ref.safetensors"))


def test_guidance_patches_at_cfg_1_match_comfyui(tmp_path):
    """At cfg 1 sampling skips the negative prompt; the patches then get ComfyUI's zero
    prediction for it (and PerpNeg still predicts the empty prompt)."""
    from parity import as_latentgraph, tiny_env

    env = tiny_env(tmp_path)
    targets = [nid for nid, n in CFG1_PROMPT.items() if n["class_type"] == "KSampler"]
    assert all(CFG1_PROMPT[t]["inputs"]["cfg"] == 1.0 for t in targets) and len(targets) == len(CFG1_REF) == 6
    run = Executor(create_registry(), env).run(as_latentgraph(CFG1_PROMPT, drop=("SaveLatent",)), targets=targets)
    for t in targets:
        # PerpNeg's projection amplifies float32 rounding: within 1e-4 on the Xeon the reference
        # was made on, 1.05e-3 on an AMD EPYC; every other patch stays within 1e-6 on both
        _close(run.get(t)["samples"], CFG1_REF[t[: -len("_k")]], 2e-3 if t == "perp_neg_k" else 1e-4)


def _args(**extra):
    g = torch.Generator().manual_seed(3)
    x, cond, uncond = (torch.randn(2, 4, 6, 6, generator=g) for _ in range(3))
    args = {"input": x, "cond_denoised": cond, "uncond_denoised": uncond, "cond_scale": 4.0,
            "denoised": uncond + 4.0 * (cond - uncond)}
    args.update(extra)
    return args


def test_cfg_norm_caps_the_per_pixel_norm():
    from latentgraph.nodes.guidance_patches import cfg_norm

    a = _args()
    out = cfg_norm(1.0)(a)
    assert (out.norm(dim=1) <= a["cond_denoised"].norm(dim=1) + 1e-5).all()
    # where the guided norm is already smaller it is left as it is; strength scales the whole
    small = _args(denoised=_args()["cond_denoised"] * 0.5)
    assert torch.allclose(cfg_norm(1.0)(small), small["denoised"])
    assert torch.allclose(cfg_norm(0.5)(small), small["denoised"] * 0.5)


def test_epsilon_scaling_divides_the_noise():
    from latentgraph.nodes.guidance_patches import epsilon_scaling

    a = _args()
    out = epsilon_scaling(1.25)(a)
    assert torch.allclose(a["input"] - out, (a["input"] - a["denoised"]) / 1.25, atol=1e-6)


def test_mahiro_weights_by_similarity():
    from latentgraph.nodes.guidance_patches import mahiro

    a = _args()
    # a negative prediction that is the guided result's own direction: similarity 1, weight 4,
    # the result is the CFG result itself
    same = dict(a, uncond_denoised=a["denoised"] / 4.0, cond_denoised=a["denoised"] / 4.0)
    assert torch.allclose(mahiro(same), same["denoised"], atol=1e-5)
    # the opposite direction: weight 0, the result is cond_scale x the positive prediction
    opposite = dict(same, uncond_denoised=-same["uncond_denoised"])
    assert torch.allclose(mahiro(opposite), 4.0 * opposite["cond_denoised"], atol=1e-5)


def test_tangential_damping_keeps_only_the_shared_direction():
    from latentgraph.nodes.guidance_patches import tangential_damping, tcfg

    cond = torch.zeros(1, 1, 1, 3)
    cond[..., 0] = 1.0
    uncond = torch.tensor([[[[1.0, 1.0, 0.0]]]])  # the matrix [[1,1,0],[1,0,0]]: v1 is the principal axis
    out = tangential_damping(cond, uncond)
    v1 = torch.linalg.svd(torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))[2][0]
    assert torch.allclose(out.flatten(), (uncond.flatten() @ v1) * v1, atol=1e-6)
    a = _args()
    untouched = tcfg({"input": a["input"], "conds_out": [a["cond_denoised"]], "conds": [[], None]})
    assert untouched == [a["cond_denoised"]]  # cfg 1: nothing to damp


def test_frequency_scale_windows():
    from latentgraph.nodes.guidance_patches import frequency_scale

    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    # a cutoff past the centre covers the whole spectrum: everything scales by scale_low
    assert torch.allclose(frequency_scale(x, 0.5, 3.0, 20), 0.5 * x, atol=1e-5)
    # a constant lives in the DC bin (the window); a checkerboard at the Nyquist bin (outside)
    i = torch.arange(8)
    checker = ((-1.0) ** (i[:, None] + i[None, :])).expand(1, 1, 8, 8)
    assert torch.allclose(frequency_scale(2.0 + checker, 0.5, 3.0, 1), 1.0 + 3.0 * checker, atol=1e-5)


def test_attention_multiply_scales_only_its_projections_and_keeps_the_base():
    from latentgraph.nodes.guidance_patches import UNetCrossAttentionMultiply, UNetSelfAttentionMultiply
    from test_model_patch_nodes import tiny_model

    model = tiny_model()
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    m = UNetSelfAttentionMultiply(model, 2.0, 1.0, 0.5, 3.0)
    after = m.unet.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0.attn1."
    assert torch.equal(after[key + "to_q.weight"], before[key + "to_q.weight"] * 2.0)
    assert after[key + "to_k.weight"].data_ptr() == model.unet.state_dict()[key + "to_k.weight"].data_ptr()  # shared
    assert torch.equal(after[key + "to_v.weight"], before[key + "to_v.weight"] * 0.5)
    assert torch.equal(after[key + "to_out.0.bias"], before[key + "to_out.0.bias"] * 3.0)
    cross = key.replace("attn1", "attn2")
    assert torch.equal(after[cross + "to_q.weight"], before[cross + "to_q.weight"])
    # the input model is as it was
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    changed = sum(not torch.equal(after[k], before[k]) for k in before)
    # per self-attention: q, v, out's weight and out's bias
    assert changed == 4 * sum(1 for k in before if k.endswith("attn1.to_q.weight"))
    # all ones: the same network
    assert UNetCrossAttentionMultiply(model, 1.0, 1.0, 1.0, 1.0).unet is model.unet


def test_ui_widgets_map_to_the_inputs():
    """UI workflows' widgets_values as ComfyUI's frontend saves them (a seed carries its
    control_after_generate mode after it; the node named with a space is found)."""
    from latentgraph.graph.ui_format import map_widgets

    registry = create_registry()
    assert map_widgets(registry.get("ImageAddNoise"), [7, "randomize", 0.3]) == {"seed": 7, "strength": 0.3}
    assert map_widgets(registry.get("ResizeAndPadImage"), [40, 24, "black", "area"]) == {
        "target_width": 40, "target_height": 24, "padding_color": "black", "interpolation": "area"}
    assert map_widgets(registry.get("LatentCut"), ["y", -5, 2]) == {"dim": "y", "index": -5, "amount": 2}
    assert map_widgets(registry.get("Epsilon Scaling"), [1.05]) == {"scaling_factor": 1.05}
    assert map_widgets(registry.get("FreSca"), [0.8, 1.25, 2]) == {"scale_low": 0.8, "scale_high": 1.25,
                                                                   "freq_cutoff": 2}
    assert map_widgets(registry.get("PerpNeg"), [1.5]) == {"neg_scale": 1.5}
    assert map_widgets(registry.get("CLIPAttentionMultiply"), [1.1, 0.9, 1.3, 0.8]) == {
        "q": 1.1, "k": 0.9, "v": 1.3, "out": 0.8}


def test_temporal_multiply_scales_the_out_projections_by_the_structural_factors():
    from latentgraph.nodes.guidance_patches import UNetTemporalAttentionMultiply
    from test_model_patch_nodes import tiny_model

    model = tiny_model()
    before = model.unet.state_dict()
    after = UNetTemporalAttentionMultiply(model, 2.0, 5.0, 0.5, 7.0).unet.state_dict()
    key = "input_blocks.1.1.transformer_blocks.0."
    assert torch.equal(after[key + "attn1.to_out.0.weight"], before[key + "attn1.to_out.0.weight"] * 2.0)
    assert torch.equal(after[key + "attn2.to_out.0.bias"], before[key + "attn2.to_out.0.bias"] * 0.5)
    assert torch.equal(after[key + "attn1.to_q.weight"], before[key + "attn1.to_q.weight"])
    changed = sum(not torch.equal(after[k], before[k]) for k in before)
    assert changed == 4 * sum(1 for k in before if k.endswith("attn1.to_q.weight"))  # 2 attns x weight, bias
