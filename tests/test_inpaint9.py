"""A 9-channel inpainting UNet against ComfyUI 0.3.64: InpaintModelConditioning with and without
the noise mask, and plain txt2img (ComfyUI then feeds the extra channels a mask of ones and its
"blank" image). The checkpoint is tiny_sd15 with a 9-channel first conv, made by
tests/fixtures/comfy_reference/leftovers16/make_inpaint.py; the prompt ComfyUI ran is inpaint9.json
there and its latents inpaint9.safetensors (README.md). The plain-model path (noise mask only)
is tests/test_everyday_nodes.py's."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor
from latentgraph.nodes import create_registry
from conftest import FIXTURES
from parity import TINY_SD15_OVERRIDES, install_checkpoint, tiny_env

REF = FIXTURES / "comfy_reference"
HERE = REF / "leftovers16"
PROMPT = json.loads((HERE / "inpaint9.json").read_text())
LATENTS = load_file(HERE / "inpaint9.safetensors")
CKPT = "lgN_tiny_sd15_inpaint.safetensors"


def _maker():
    spec = importlib.util.spec_from_file_location("make_inpaint", HERE / "make_inpaint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("inpaint9")
    env = tiny_env(root)
    shutil.copy(REF / "everyday" / "lgI_img.png", env.input_dir / "lgI_img.png")
    _maker().make_inpaint_checkpoint(REF / "tiny_sd15.safetensors", root / "raw.safetensors")
    arch = install_checkpoint(root / "raw.safetensors", root / "models", TINY_SD15_OVERRIDES, CKPT)
    assert arch.inpaint and arch.unet.in_channels == 9
    prompt = {}
    for nid, n in PROMPT.items():
        if n["class_type"] == "TinyCheckpointLoader":
            prompt[nid] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}
        elif n["class_type"] == "TinyMarkInpaint":  # oracle-only: our loader knows a 9-channel UNet
            continue
        elif n["class_type"] != "SaveLatent":
            prompt[nid] = json.loads(json.dumps(n).replace('["model", 0]', '["ckpt", 0]'))
    keys = sorted(LATENTS)
    run = Executor(create_registry(), env).run(prompt, targets=[f"{k}_k" for k in keys])
    return {k: run.get(f"{k}_k")["samples"] for k in keys}


def test_the_fixture_holds_every_run():
    assert sorted(LATENTS) == ["mask_dpmpp_2m_07", "mask_euler", "nomask_euler", "txt2img_blank"]


@pytest.mark.parametrize("key", sorted(LATENTS))
def test_matches_comfyui(results, key):
    out, ref = results[key], LATENTS[key]
    assert out.shape == ref.shape == (1, 4, 8, 8)
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"relative error {err:.3g}"


def test_the_extra_channels_matter():
    """The inpainting runs differ from txt2img and from each other by far more than the tolerance,
    so the comparison above would catch concat channels that were ignored or swapped."""
    runs = [LATENTS[k] for k in sorted(LATENTS)]
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            assert (a - b).abs().max() > 1e-2 * a.abs().max()


def test_the_checkpoint_is_made_reproducibly(tmp_path):
    _maker().make_inpaint_checkpoint(REF / "tiny_sd15.safetensors", tmp_path / "a.safetensors")
    w = load_file(str(tmp_path / "a.safetensors"))["model.diffusion_model.input_blocks.0.0.weight"]
    base = load_file(str(REF / "tiny_sd15.safetensors"))["model.diffusion_model.input_blocks.0.0.weight"]
    assert w.shape == (32, 9, 3, 3) and torch.equal(w[:, :4], base)
    assert w[:, 4:].std().item() == pytest.approx(0.1, rel=0.15)
