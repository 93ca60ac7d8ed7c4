"""The custom-sampling nodes (SamplerCustomAdvanced with NOISE, GUIDER, SAMPLER and SIGMAS nodes)
against ComfyUI 0.3.64 on the tiny SD1 checkpoint: the API prompt ComfyUI ran is
tests/fixtures/comfy_reference/custom_sampling/prompt.json and its latents are in
latents.safetensors there (README.md: provenance and keys). Plus the values' own behaviour:
RandomNoise is KSampler's noise, the sigma lists' exact numbers, errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import detect_architecture, read_state_dict
from latentgraph.models.families import METADATA_KEY
from latentgraph.nodes import create_registry
from latentgraph.nodes.custom_sampling import (AlignYourStepsScheduler, DisableNoise, ExponentialScheduler,
                                               ExtendIntermediateSigmas, FlipSigmas, LaplaceScheduler,
                                               PolyexponentialScheduler, RandomNoise, SamplerDPMPP_2M_SDE,
                                               SetFirstSigma, SplitSigmasDenoise, VPScheduler, perp_neg)
from latentgraph.sampling.ksampler import SamplerChoice, sampler_parts
from latentgraph.sampling.noise import prepare_noise
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
HERE = REF / "custom_sampling"
PROMPT = json.loads((HERE / "prompt.json").read_text())
LATENTS = load_file(HERE / "latents.safetensors")
SAVES = {n["inputs"]["samples"][0] if n["inputs"]["samples"][1] == 0 else "basic_den": nid[: -len("_save")]
         for nid, n in PROMPT.items() if n["class_type"] == "SaveLatent"}


def latentgraph_prompt() -> dict:
    """ComfyUI's prompt with the oracle-only TinyCheckpointLoader as CheckpointLoaderSimple
    and without the SaveLatent sinks (the tests target the samplers)."""
    out = {}
    for nid, n in PROMPT.items():
        if n["class_type"] == "TinyCheckpointLoader":
            out[nid] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": n["inputs"]["ckpt_name"]}}
        elif n["class_type"] != "SaveLatent":
            out[nid] = n
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom_sampling")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    sd, meta = read_state_dict(REF / "tiny_sd15.safetensors")
    arch = detect_architecture(sd, meta, "tiny_sd15", {"unet_num_heads": 8, "text_num_heads": 2})
    save_file(sd, str(ckpts / "tiny_sd15.safetensors"), metadata={METADATA_KEY: arch.to_json()})
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


@pytest.fixture(scope="module")
def results(env):
    """Every saved latent of the prompt, run once in latentgraph."""
    targets = sorted({nid for nid in SAVES if nid != "basic_den"})
    run = Executor(create_registry(), env).run(latentgraph_prompt(), targets=targets)
    out = {SAVES[t]: run.get(t)["samples"] for t in targets}
    out["basic_den"] = run.get("basic_s", 1)["samples"]
    return out


def close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The issue's tolerance: within 1e-4 of the reference's largest magnitude."""
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"relative error {err:.3g}"


def test_the_fixture_holds_every_run():
    assert len(LATENTS) == 31
    assert set(SAVES.values()) == set(LATENTS)


@pytest.mark.parametrize("key", sorted(LATENTS))
def test_run_matches_comfyui(results, key):
    close(results[key], LATENTS[key])


@pytest.mark.parametrize("key", sorted(set(LATENTS) - {"basic", "basic_den"}))
def test_every_run_differs_from_the_plain_one(key):
    """Each node really changed the result (by 10x the tolerance at least), so a match is not by chance."""
    base = LATENTS["basic"]
    assert (LATENTS[key] - base).abs().max() > 1e-3 * base.abs().max()
