"""Every ComfyUI workflow fixture (and two frontend-made subgraph workflows) runs end to end with
tiny random models placed under the file names it references: checkpoints, a VAE, ControlNets, a
T2I-Adapter, GLIGEN, CLIP vision, an SD2.1-unCLIP .ckpt, and input images. The plain templates
run as they are (sizes, steps, samplers); the image-conditioning ones with their steps and samplers
at SCALE of their sizes (the test's override, not the fixture's): their 18 tests take about 45 s,
and all 27 took about 4.5 minutes on 2 shared cores; the two upscale-model ones (ESRGAN, hires fix)
run at a quarter of their sizes, 4 tests in about 25 s. Marked slow, run by .ci/run."""

from __future__ import annotations

import importlib.util
import json
from unittest import mock
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from latentgraph.graph import Environment, Executor, Link, Workflow
from latentgraph.models.checkpoint import original_layout, read_state_dict, save_checkpoint
from latentgraph.models.clip_vision import (METADATA_KEY as VISION_KEY, clip_vision_tensors, random_clip_vision,
                                            tiny_config)
from latentgraph.models.families import METADATA_KEY, Architecture, tiny_architecture
from latentgraph.models.make import make_checkpoint, make_controlnet, make_gligen, random_networks, unclip_tensors
from latentgraph.models.upscale import make_tiny_upscale_state_dict

REVISION_DIM = 1280  # the width of ViT-bigG's image_embeds and of SDXL's pooled text
from latentgraph.nodes import create_registry, create_services

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_workflows"
T2I = Path(__file__).parent / "fixtures" / "comfy_reference" / "t2i_adapter"
NAMES = sorted(p.name[: -len(".ui.json")] for p in FIXTURES.glob("*.ui.json"))
CHECKPOINTS = {"v1-5-pruned-emaonly-fp16.safetensors": "sd15", "dreamshaper_8.safetensors": "sd15",
               "512-inpainting-ema.safetensors": "sd2", "sd_xl_turbo_1.0_fp16.safetensors": "sdxl",
               "sd_xl_refiner_1.0.safetensors": "sdxl_refiner",
               "DreamShaper_8_pruned.safetensors": "sd15", "architecturerealmix_v11.safetensors": "sd15",
               "AOM3A3.safetensors": "sd15", "AOM3A1.safetensors": "sd15"}
CONTROLNETS = ["control_v11p_sd15_scribble_fp16.safetensors", "control_v11f1p_sd15_depth_fp16.safetensors",
               "control_openpose.safetensors", "control_scribble.safetensors"]
IMAGES = ["image2image_input_image.jpg", "controlnet_example_input_image.png", "depth_controlnet_input_image.png",
          "sdxl_revision_text_prompts_ref_image1.png", "sdxl_revision_text_prompts_ref_image2.png",
          "pose_worship.png", "pose_present.png", "house_scribble.png", "mountains.png", "sunset.png",
          "shark_depthmap.png"]
# The image-conditioning workflows at their own sizes (1024x1024, 1920x1088; a ControlNet
# doubling each step) take minutes each on 2 cores (depth_controlnet alone ran past 6 before it was
# stopped): they run with their own steps and samplers at SCALE of their sizes (~36 s for the
# nine), and at QUICK (256 px, 4 steps) where the picture is compared with and without the
# conditioning (~9 s).
SCALE = 0.375
QUICK = (0.25, 4)
# The upscale-model workflows (txt2img -> ESRGAN 2x; hires fix through a 4x ESRGAN) at a quarter of
# their sizes and at most 4 steps: a 4x model on the 768 x 768 first pass alone is a 3072 x 3072 image
UPSCALING = {"esrgan_example", "hiresfix_esrgan_workflow"}
CONDITIONING = {"2_pass_pose_worship", "controlnet_example", "depth_controlnet", "example_depth_t2i_adapter", "gligen_textbox_example", "mixing_controlnets",
                "sdxl_revision_text_prompts", "sdxl_revision_zero_positive", "unclip_example"}


def _t2i_fixture_maker():
    spec = importlib.util.spec_from_file_location("t2i_make_fixtures", T2I / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_revision_sdxl(path: Path) -> None:
    """A tiny SDXL whose pooled text (OpenCLIP bigG's projection) is 1280 wide, as the real one's."""
    arch = tiny_architecture("sdxl")
    arch.text["g"] = replace(arch.text["g"], projection_dim=REVISION_DIM)
    arch.unet = replace(arch.unet, adm_in_channels=REVISION_DIM + 6 * 256)
    with torch.no_grad():
        unet, vae, text = random_networks(arch, seed=33)
        save_checkpoint(original_layout(arch, unet, vae, text), path,
                        metadata={"format": "pt", METADATA_KEY: arch.to_json()})


def _write_models(models: Path) -> None:
    for seed, (name, family) in enumerate(CHECKPOINTS.items()):
        make_checkpoint(models / "checkpoints" / name, family, "tiny", seed=seed)
    # T2I-Adapters add features after SD1's blocks 2/5/8/11: a checkpoint with SD1's 4 levels, kept
    # outside the model folders (it goes in as the pickle v1-5-pruned-emaonly.ckpt below)
    four_levels = models.parent / "sd15_4level.safetensors"
    _t2i_fixture_maker().write_checkpoint(four_levels)
    (models / "controlnet").mkdir()
    for seed, name in enumerate(CONTROLNETS):
        make_controlnet(models / "controlnet" / name, "sd15", "tiny", seed=20 + seed)
    # ComfyUI_examples' GLIGEN workflow runs on v1-5-pruned-emaonly.ckpt, the 4-level UNet the
    # T2I-Adapter needs: make_gligen lays its fusers out on tiny_architecture("sd15"), so it is
    # handed that checkpoint's architecture instead
    with safe_open(str(four_levels), framework="pt") as f:
        arch = Architecture.from_json(f.metadata()[METADATA_KEY])
    with mock.patch("latentgraph.models.make.tiny_architecture", lambda family: arch):
        make_gligen(models / "gligen" / "gligen_sd14_textbox_pruned.safetensors", "sd15", "tiny", seed=30)
    # Revision puts ViT-bigG's 1280-wide image_embeds where SDXL's pooled text goes: the tiny SDXL
    # there has SDXL's pooled width, the tiny ViT-bigG its projection width
    _write_revision_sdxl(models / "checkpoints" / "sd_xl_base_1.0.safetensors")
    config = replace(tiny_config("vit-bigg"), projection_dim=REVISION_DIM)
    (models / "clip_vision").mkdir()
    save_file(clip_vision_tensors(random_clip_vision(config, seed=31)),
              str(models / "clip_vision" / "clip_vision_g.safetensors"),
              metadata={"format": "pt", VISION_KEY: json.dumps(config.to_dict(), sort_keys=True)})
    # a standalone VAE file: the tiny SD1 checkpoint's VAE without its first_stage_model. prefix
    sd, _ = read_state_dict(models / "checkpoints" / "v1-5-pruned-emaonly-fp16.safetensors")
    vae = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    (models / "vae").mkdir()
    save_file(vae, str(models / "vae" / "vae-ft-mse-840000-ema-pruned.safetensors"))
    # ComfyUI_examples' workflows name pickles: t2iadapter_depth_sd14v1.pth, v1-5-pruned-emaonly.ckpt,
    # Anything-V3.0.ckpt and the VAE kl-f8-anime2.ckpt, written here as torch.save writes them
    # (plain tensors under state_dict; no metadata, so SD1's fixed 8 heads, which the tiny SD1 UNets have)
    torch.save({"state_dict": vae}, models / "vae" / "kl-f8-anime2.ckpt")
    torch.save(read_state_dict(T2I / "tiny_t2i_full.safetensors")[0],
               models / "controlnet" / "t2iadapter_depth_sd14v1.pth")
    torch.save({"state_dict": read_state_dict(four_levels)[0]}, models / "checkpoints" / "v1-5-pruned-emaonly.ckpt")
    # the 2-pass pose workflow's first pass: the openpose ControlNet's UNet (the usual tiny SD1)
    torch.save({"state_dict": read_state_dict(models / "checkpoints" / "AOM3A1.safetensors")[0]},
               models / "checkpoints" / "Anything-V3.0.ckpt")
    # The unCLIP example names a .ckpt: a pickled {"state_dict": plain tensors}, as the published one
    # (read with torch.load(weights_only=True); safetensors bytes under a .ckpt name are not read).
    # A pickle has no metadata, so the UNet's heads come from SD2's rule (64 channels a head): the
    # tiny UNet is made 64 wide, where that rule gives whole heads.
    arch = tiny_architecture("sd21_unclip_h")
    arch.unet = replace(arch.unet, model_channels=64)
    torch.save({"state_dict": unclip_tensors(arch, seed=32)[0]}, models / "checkpoints" / "sd21-unclip-h.ckpt")
    # the hires-fix example's SD2.1 768 checkpoint under its .ckpt name (safetensors bytes, read as such)
    make_checkpoint(models / "checkpoints" / "v2-1_768-ema-pruned.ckpt", "sd2", "tiny", seed=40)
    # the ESRGAN examples' RealESRGAN .pth files, pickled in BasicSR's layout ({"params_ema": tensors})
    (models / "upscale_models").mkdir()
    torch.save({"params_ema": make_tiny_upscale_state_dict("compact", 41)}, models / "upscale_models" / "RealESRGAN_x2.pth")
    torch.save({"params_ema": make_tiny_upscale_state_dict("esrgan", 42)},
               models / "upscale_models" / "RealESRGAN_x4plus.pth")
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    (models / "loras").mkdir(parents=True)
    save_file({f"{key}.lora_up.weight": torch.randn(32, 4, generator=g),
               f"{key}.lora_down.weight": torch.randn(4, 32, generator=g), f"{key}.alpha": torch.tensor(4.0)},
              str(models / "loras" / "blindbox_v1_mix.safetensors"))


def _write_images(inputs: Path) -> None:
    rng = np.random.default_rng(0)
    for name in IMAGES:
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(inputs / name)
    rgba = np.concatenate([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.full((64, 64, 1), 255, np.uint8)], -1)
    rgba[16:40, 16:48, 3] = 0
    Image.fromarray(rgba, "RGBA").save(inputs / "inpaint_example_input_image.png")


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    home = tmp_path_factory.mktemp("comfy_home")
    _write_models(home / "models")
    _write_images(home / "input")
    env = Environment(output_dir=home / "output", input_dir=home / "input", temp_dir=home / "temp",
                      models_dir=home / "models", device="cpu")
    return Executor(create_registry(), env, services=create_services(env))


def _smaller(wf: Workflow, scale: float = SCALE, steps: int | None = None) -> None:
    """Every size times ``scale`` (in 64-pixel steps, which every tiny UNet here divides), the
    2-pass upscale and the GLIGEN boxes with it; KSampler steps capped at ``steps`` if given."""
    def scaled(value: int, unit: int) -> int:
        return max(unit, int(round(value * scale / unit)) * unit)

    for n in wf.nodes.values():
        if n.class_type in ("EmptyLatentImage", "LatentUpscale", "ImageScale"):
            n.inputs["width"], n.inputs["height"] = scaled(n.inputs["width"], 64), scaled(n.inputs["height"], 64)
        if n.class_type == "KSampler" and steps is not None:
            n.inputs["steps"] = min(n.inputs["steps"], steps)
        if n.class_type == "GLIGENTextBoxApply":  # the boxes keep their place in the picture
            n.inputs["width"], n.inputs["height"] = scaled(n.inputs["width"], 8), scaled(n.inputs["height"], 8)
            n.inputs["x"], n.inputs["y"] = int(n.inputs["x"] * scale) // 8 * 8, int(n.inputs["y"] * scale) // 8 * 8


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fixture_runs_end_to_end(executor, name):
    wf = Workflow.load(FIXTURES / f"{name}.ui.json", executor.registry)
    if name in CONDITIONING:
        _smaller(wf)
    if name in UPSCALING:
        _smaller(wf, 0.25, steps=4)
    result = executor.run(wf)
    savers = {k for k, n in wf.nodes.items() if n.class_type in ("SaveImage", "PreviewImage")}
    assert set(result.outputs) == savers
    for saver in sorted(k for k in savers if wf.nodes[k].class_type == "SaveImage"):
        (image,) = result.outputs[saver]["images"]
        picture = Image.open(executor.env.output_dir / image["subfolder"] / image["filename"])
        # the saved picture has the size of the latent it decodes (each pass's in a 2-pass workflow)
        latent = _decoded_latent(wf, saver)
        if latent is not None:
            assert picture.size == (latent.inputs["width"], latent.inputs["height"]), saver
        # the UI graph went into the PNG, as ComfyUI's frontend sends it
        assert json.loads(picture.text["workflow"])["nodes"]
        assert set(json.loads(picture.text["prompt"])) == set(wf.nodes)


@pytest.mark.slow
@pytest.mark.parametrize("name,sizes", [("esrgan_example", {"9": (256, 256)}),
                                        ("hiresfix_esrgan_workflow", {"9": (192, 192), "12": (384, 384)})])
def test_upscale_model_fixtures_save_the_upscaled_sizes(executor, name, sizes):
    """txt2img at 128 -> the 2x RealESRGAN_x2 -> 256; the hires fix: 192 -> the 4x model (768)
    -> ImageScale to 384 -> VAEEncode -> second pass at 384 (the test's quarter sizes)."""
    wf = Workflow.load(FIXTURES / f"{name}.ui.json", executor.registry)
    _smaller(wf, 0.25, steps=4)
    upscaler = next(k for k, n in wf.nodes.items() if n.class_type == "ImageUpscaleWithModel")
    result = executor.run(wf, targets=[*sizes, upscaler])
    for saver, size in sizes.items():
        (image,) = result.outputs[saver]["images"]
        assert Image.open(executor.env.output_dir / image["subfolder"] / image["filename"]).size == size
    side = 256 if name == "esrgan_example" else 768
    assert result.get(upscaler).shape == (1, side, side, 3)


def _decoded_latent(wf: Workflow, saver: str):
    """The EmptyLatentImage or LatentUpscale whose size the picture saved by ``saver`` has, found
    up its images -> samples -> latent_image links; None when the latent came from an image."""
    n = wf.nodes[saver]
    while n.class_type not in ("EmptyLatentImage", "LatentUpscale"):
        link = next((n.inputs[k] for k in ("images", "samples", "latent_image") if isinstance(n.inputs.get(k), Link)),
                    None)
        if link is None:
            return None
        n = wf.nodes[link.node]
    return n


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested", "two_instances"])
def test_subgraph_fixture_runs_end_to_end(executor, name):
    """Frontend-made subgraph workflows (tests/fixtures/subgraphs) run as they are."""
    wf = Workflow.load(FIXTURES.parent / "subgraphs" / f"{name}.ui.json", executor.registry)
    # a fresh result cache: these compute what the default template computes, which may have run
    executor = Executor(executor.registry, executor.env, services=executor.services)
    result = executor.run(wf)
    saved = [image for ui in result.outputs.values() for image in ui["images"]]
    assert len(saved) == (2 if name == "two_instances" else 1)
    for image in saved:
        picture = Image.open(executor.env.output_dir / image["subfolder"] / image["filename"])
        assert picture.size == (512, 512)
        assert any(":" in k for k in json.loads(picture.text["prompt"]))  # flattened ids


def _without_image_conditioning(wf: Workflow) -> int:
    """Make every image-conditioning node a no-op, as ComfyUI treats it: ControlNet and unCLIP
    strength 0 (the conditioning passes unchanged), and each GLIGEN box node's consumers take the
    conditioning it was given. Returns how many nodes it changed."""
    changed = 0
    for n in wf.nodes.values():
        if n.class_type in ("ControlNetApply", "ControlNetApplyAdvanced", "unCLIPConditioning"):
            n.inputs["strength"] = 0.0
            changed += 1
    boxes = {k: n.inputs["conditioning_to"] for k, n in wf.nodes.items() if n.class_type == "GLIGENTextBoxApply"}
    for n in wf.nodes.values():
        for name, value in n.inputs.items():
            while isinstance(value, Link) and value.node in boxes:
                value = boxes[value.node]
                changed += 1
            n.inputs[name] = value
    return changed


def _saved_pixels(executor: Executor, wf: Workflow) -> np.ndarray:
    result = executor.run(wf)
    final = next(k for k, n in wf.nodes.items() if n.class_type == "SaveImage")
    (image,) = result.outputs[final]["images"]
    return np.asarray(Image.open(executor.env.output_dir / image["subfolder"] / image["filename"]).convert("RGB"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONDITIONING))
def test_the_image_conditioning_changes_the_picture(executor, name):
    """The ControlNets, the T2I-Adapter, the GLIGEN boxes and the CLIP-vision embeddings reach the
    sampler: with them made no-ops (same seeds, sizes, steps) the saved picture is another one."""
    wf = Workflow.load(FIXTURES / f"{name}.ui.json", executor.registry)
    _smaller(wf, *QUICK)
    with_it = _saved_pixels(executor, wf)
    assert _without_image_conditioning(wf) >= 1
    without = _saved_pixels(executor, wf)
    assert with_it.shape == without.shape
    assert not np.array_equal(with_it, without)
