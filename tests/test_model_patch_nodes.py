"""The model-patch nodes (FreeU, FreeU_V2, RescaleCFG, CFGZeroStar, APG, DifferentialDiffusion,
ModelSamplingDiscrete x0/img_to_img/lcm) against ComfyUI 0.3.64 on the tiny SD1 checkpoint:
the API prompt ComfyUI ran is tests/fixtures/comfy_reference/model_patches/prompt.json and
its latents are latents.safetensors there (README.md in that folder). Then unit checks of each
patch function on hand-made tensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor
from latentgraph.models.checkpoint import detect_architecture, read_state_dict
from latentgraph.models.families import METADATA_KEY
from latentgraph.nodes import create_registry
from latentgraph.nodes.model_patches import (
    APG, CFGZeroStar, DifferentialDiffusion, FreeU, FreeU_V2, RescaleCFG, apg_function, cfg_zero_star,
    differential_mask, fourier_filter, rescale_cfg, zero_star_scale)
from latentgraph.sampling.guidance import cfg_function
from latentgraph.sampling.schedule import DiscreteSchedule, LCMSchedule
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
HERE = REF / "model_patches"
PROMPT = json.loads((HERE / "prompt.json").read_text())
LATENTS = load_file(HERE / "latents.safetensors")
PATCHED = ["freeu", "freeu_v2", "rescale_cfg", "cfg_zero_star", "apg", "msd_x0", "msd_img_to_img", "msd_lcm",
           "msd_lcm_sampler", "msd_lcm_zsnr"]
MASKED = ["diffdiff", "diffdiff_half"]


def latentgraph_prompt() -> dict:
    """ComfyUI's prompt with the oracle-only TinyCheckpointLoader as CheckpointLoaderSimple
    and without the SaveLatent sinks (the tests target the KSamplers)."""
    out = {}
    for nid, n in PROMPT.items():
        if n["class_type"] == "TinyCheckpointLoader":
            out[nid] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": n["inputs"]["ckpt_name"]}}
        elif n["class_type"] != "SaveLatent":
            out[nid] = n
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every KSampler of the prompt, run once in latentgraph."""
    root = tmp_path_factory.mktemp("model_patches")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    sd, meta = read_state_dict(REF / "tiny_sd15.safetensors")
    arch = detect_architecture(sd, meta, "tiny_sd15", {"unet_num_heads": 8, "text_num_heads": 2})
    save_file(sd, str(ckpts / "tiny_sd15.safetensors"), metadata={METADATA_KEY: arch.to_json()})
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    targets = [nid for nid, n in PROMPT.items() if n["class_type"] == "KSampler"]
    run = Executor(create_registry(), env).run(latentgraph_prompt(), targets=targets)
    return {t[: -len("_k")]: run.get(t)["samples"] for t in targets}


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The issue's tolerance: within 1e-4 of the reference's largest magnitude."""
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"relative error {err:.3g}"


def test_unpatched_runs_match(results):
    close(results["base"], LATENTS["base"])
    close(results["masked_base"], LATENTS["masked_base"])


@pytest.mark.parametrize("name", PATCHED + MASKED)
def test_patched_run_matches_comfyui(results, name):
    close(results[name], LATENTS[name])
    # and the patch really changed the picture (by 10x the tolerance at least)
    base = LATENTS["masked_base" if name in MASKED else "base"]
    assert (LATENTS[name] - base).abs().max() > 1e-3 * base.abs().max()


def test_prompt_uses_every_node():
    classes = {n["class_type"] for n in PROMPT.values()}
    assert {"FreeU", "FreeU_V2", "RescaleCFG", "CFGZeroStar", "APG", "DifferentialDiffusion",
            "ModelSamplingDiscrete"} <= classes
    samplings = {n["inputs"]["sampling"] for n in PROMPT.values() if n["class_type"] == "ModelSamplingDiscrete"}
    assert samplings == {"x0", "img_to_img", "lcm"}
