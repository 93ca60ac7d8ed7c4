"""SelfAttentionGuidance, PerturbedAttentionGuidance, PatchModelAddDownscale and HyperTile:
whole KSampler runs on the tiny SD1 checkpoint against ComfyUI 0.3.64's latents (the prompts in
tests/fixtures/comfy_reference/attention_patches/prompts, run through the real nodes here), and
unit checks of the pieces (blur map, identity attention, tiling, sigma ranges, errors)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import detect_architecture, read_state_dict
from latentgraph.models.families import METADATA_KEY
from latentgraph.models.unet import attention
from latentgraph.nodes import attention_patches as ap
from latentgraph.nodes import create_registry
from conftest import FIXTURES

REF_DIR = FIXTURES / "comfy_reference"
HERE = REF_DIR / "attention_patches"
REF = load_file(HERE / "attention_patches_ref.safetensors")
CASES = sorted(REF)


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("attnpatch")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    sd, meta = read_state_dict(REF_DIR / "tiny_sd15.safetensors")  # + the head counts the file cannot show
    arch = detect_architecture(sd, meta, "tiny_sd15.safetensors", {"unet_num_heads": 8, "text_num_heads": 2})
    save_file(sd, str(ckpts / "tiny_sd15.safetensors"), metadata={METADATA_KEY: arch.to_json()})
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def prompt(case: str) -> dict:
    """The API prompt ComfyUI ran, with our loader for its oracle-only one and no SaveLatent."""
    data = json.loads((HERE / "prompts" / f"{case}.json").read_text())
    data["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": data["1"]["inputs"]["ckpt_name"]}}
    del data["7"]
    return data


def run(executor, data: dict) -> torch.Tensor:
    return executor.run(Workflow.from_api(data), targets=["6"]).get("6")["samples"]


def unpatched(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    data["6"]["inputs"]["model"] = ["1", 0]
    del data["5"]
    return data


def test_every_case_has_a_prompt_and_a_reference():
    prompts = sorted(p.stem for p in (HERE / "prompts").glob("*.json"))
    assert prompts == CASES and len(CASES) == 9
    assert {prompt(c)["5"]["class_type"] for c in CASES} == {
        "SelfAttentionGuidance", "PerturbedAttentionGuidance", "PatchModelAddDownscale", "HyperTile"}


@pytest.mark.parametrize("case", CASES)
def test_matches_comfyui(executor, case):
    data = prompt(case)
    out, ref = run(executor, data), REF[case]
    assert out.shape == ref.shape
    scale = ref.abs().max()
    rel = float((out - ref).abs().max() / scale)
    assert rel < 1e-4, f"{case}: max diff {rel:.2e} of the latent's max abs value"
    # the patch matters: without it the latent is far from ComfyUI's patched one
    plain = run(executor, unpatched(data))
    assert float((plain - ref).abs().max() / scale) > 1e-3
