"""unCLIP and SDXL Revision: the noise-augmented image-embedding vector and whole sampling runs
against ComfyUI 0.3.64 references (tests/fixtures/comfy_reference/unclip/README.md), the
SD2.1-unCLIP checkpoints (loading, detection, what is still refused), the nodes and their
errors, and make-checkpoint --family sd21_unclip_l/h."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Environment, Executor, String, Workflow, node
from latentgraph.models.clip_vision import ClipVisionOutput
from latentgraph.models.unclip import noise_level, schedule_buffers, unclip_adm
from latentgraph.nodes import create_registry
from latentgraph.nodes.clip_vision import CLIP_VISION_OUTPUT
from conftest import FIXTURES
from unclip_fixtures import make_revision_sdxl, make_unclip_l

REF = FIXTURES / "comfy_reference" / "unclip"
ADM = load_file(REF / "adm_ref.safetensors")
SAMPLES = load_file(REF / "unclip_ref.safetensors")
INPUTS = load_file(REF / "inputs.safetensors")


def output(embeds: torch.Tensor) -> ClipVisionOutput:
    return ClipVisionOutput(last_hidden_state=embeds[:, None], image_embeds=embeds,
                            penultimate_hidden_states=embeds[:, None])


# -- the vector, against ComfyUI's comfy.model_base.unclip_adm ---------------------------------
# name: (width, [(rows of the embeddings, strength, noise_augmentation)], seed, merge level)
ADM_CASES = {
    "d32_s1_a0_seed0": (32, [((0,), 1.0, 0.0)], 0, 0.05),
    "d32_s1_a03_seed42": (32, [((0,), 1.0, 0.3)], 42, 0.05),
    "d32_s07_a05_batch2_seed7": (32, [((0, 1), 0.7, 0.5)], 7, 0.05),
    "d32_chain_seed42": (32, [((0,), 1.0, 0.0), ((1,), 0.5, 0.3)], 42, 0.05),
    "d32_chain3_seed3": (32, [((0,), 1.0, 0.1), ((1, 2), -0.4, 1.0)], 3, 0.05),
    "d1024_s1_a01_seed123": (1024, [((0,), 1.0, 0.1)], 123, 0.05),
    "d1280_revision_seed42": (1280, [((0,), 1.0, 0.0)], 42, 0.0),
    "d1280_revision_chain_seed9": (1280, [((0,), 0.8, 0.2), ((1,), 1.0, 0.0)], 9, 0.0),
}


@pytest.mark.parametrize("case", sorted(ADM_CASES))
def test_adm_vector_is_bit_equal_to_comfyui(case):
    dim, entries, seed, merge = ADM_CASES[case]
    embeds = ADM[f"embeds_{dim}"]
    conds = [{"clip_vision_output": output(embeds[list(rows)]), "strength": s, "noise_augmentation": a}
             for rows, s, a in entries]
    got = unclip_adm(conds, dim, seed, merge, "model")
    assert got.shape == (1, 2 * dim)
    assert torch.equal(got, ADM[f"adm/{case}"])


def test_noise_level_and_schedule_values():
    assert [noise_level(a) for a in (0.0, 0.3, 0.5, 1.0)] == [0, 300, 500, 999]  # round(299.7), round(499.5)
    buffers = schedule_buffers()
    assert sorted(buffers) == ["alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
                               "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                               "sqrt_recipm1_alphas_cumprod"]
    assert buffers["betas"].shape == (1000,) and float(buffers["betas"][-1]) == pytest.approx(0.999)
    assert float(buffers["alphas_cumprod_prev"][0]) == 1.0


def test_adm_errors_name_the_problem():
    with pytest.raises(ValueError) as info:
        unclip_adm([{"clip_vision_output": output(torch.zeros(1, 1024)), "strength": 1.0,
                     "noise_augmentation": 0.0}], 768, 0, 0.05, "Stable Diffusion 2.1 unCLIP-L")
    assert str(info.value) == (
        "Stable Diffusion 2.1 unCLIP-L takes CLIP image embeddings 768 wide; this CLIP vision output's image_embeds "
        "are 1024 wide (a CLIP vision model of another size: unCLIP-L needs ViT-L/14 (768), unCLIP-H ViT-H/14 "
        "(1024), SDXL Revision ViT-bigG/14 (1280))")
    with pytest.raises(ValueError) as info:
        unclip_adm([], 32, 0, 0.05, "m")
    assert str(info.value) == "m: unclip_conditioning must be a non-empty list of entries"
    with pytest.raises(ValueError) as info:
        unclip_adm([{"clip_vision_output": output(torch.zeros(1, 32)), "strength": 1.0,
                     "noise_augmentation": 1.5}], 32, 0, 0.05, "m")
    assert str(info.value) == "m: unclip_conditioning entry 0: noise_augmentation 1.5 is not in [0, 1]"


# -- whole runs: the API prompts given to ComfyUI, run here ------------------------------------
@node(outputs=[CLIP_VISION_OUTPUT])
def FixtureClipVisionOutput(key: Annotated[str, String("embeds32_a")]) -> ClipVisionOutput:
    """The reference prompts' LGClipVisionOutputFromFile: image_embeds from inputs.safetensors."""
    return output(INPUTS[key])


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    make_unclip_l(ckpts / "lgB_tiny_unclip_l.safetensors")
    make_revision_sdxl(ckpts / "lgB_tiny_sdxl_revision.safetensors")
    registry = create_registry()
    registry.register(FixtureClipVisionOutput)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(registry, env)


# the oracle-only nodes of the prompts -> what a latentgraph graph uses in their place
STAND_INS = {"TinyUnclipCheckpointLoader": "unCLIPCheckpointLoader",
             "TinyRevisionCheckpointLoader": "CheckpointLoaderSimple"}


def reference_workflow(name: str) -> Workflow:
    prompt = json.loads((REF / f"{name}.api.json").read_text())
    del prompt["save"]
    for entry in prompt.values():
        if entry["class_type"] == "LGClipVisionOutputFromFile":
            entry["class_type"], entry["inputs"] = "FixtureClipVisionOutput", {"key": entry["inputs"]["key"]}
        entry["class_type"] = STAND_INS.get(entry["class_type"], entry["class_type"])
    return Workflow.from_api(prompt, name)


@pytest.mark.parametrize("name", ["unclip_a0", "unclip_a03", "unclip_chain", "unclip_batch2", "unclip_no_image",
                                  "revision_a0", "revision_chain"])
def test_sampling_matches_comfyui(executor, name):
    out = executor.run(reference_workflow(name), targets=["k"]).get("k")["samples"]
    ref = SAMPLES[f"sample/{name}"]
    assert out.shape == ref.shape
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4, f"{name}: max difference {rel:.2e} of the latent's max abs value"


def test_the_image_changes_the_picture():
    """The references differ from each other: the image, its noise level and chaining all count."""
    names = ["unclip_a0", "unclip_a03", "unclip_chain", "unclip_batch2", "unclip_no_image"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert float((SAMPLES[f"sample/{a}"] - SAMPLES[f"sample/{b}"]).abs().max()) > 1e-2, (a, b)
