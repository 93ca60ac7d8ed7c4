"""The SIGMAS of every scheduler node and sigma edit, compared directly with ComfyUI 0.3.64's
(tests/fixtures/comfy_reference/leftovers16/sigmas.json, made by make_prompt_sigmas.py; each
SIGMAS saved by the oracle-only SaveSigmas node into sigmas.safetensors), within 1e-6 of the
list's largest value; SamplingPercentToSigma's FLOAT from percent_to_sigma.json."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor
from latentgraph.nodes import create_registry
from conftest import FIXTURES
from parity import as_latentgraph, tiny_env

REF = FIXTURES / "comfy_reference"
HERE = REF / "leftovers16"
PROMPT = json.loads((HERE / "sigmas.json").read_text())
SIGMAS = load_file(HERE / "sigmas.safetensors")
PERCENT = json.loads((HERE / "percent_to_sigma.json").read_text())["values"]
# sink node -> (node, output) it saved
SINKS = {nid: tuple(n["inputs"]["sigmas" if n["class_type"] == "SaveSigmas" else "value"])
         for nid, n in PROMPT.items() if n["class_type"] in ("SaveSigmas", "SaveValueJSON")}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    env = tiny_env(tmp_path_factory.mktemp("sigma_parity"))
    prompt = as_latentgraph(PROMPT, drop=("SaveSigmas", "SaveValueJSON"))
    targets = sorted({node for node, _ in SINKS.values()})
    run = Executor(create_registry(), env).run(prompt, targets=targets)
    return {sink[len("save_"):]: run.get(node, out) for sink, (node, out) in SINKS.items()}


def test_the_reference_covers_every_sigma_node():
    nodes = {PROMPT[node]["class_type"] for node, _ in SINKS.values()}
    assert nodes == {"BasicScheduler", "KarrasScheduler", "ExponentialScheduler", "PolyexponentialScheduler",
                     "LaplaceScheduler", "VPScheduler", "BetaSamplingScheduler", "SDTurboScheduler",
                     "AlignYourStepsScheduler", "GITSScheduler", "SplitSigmas", "SplitSigmasDenoise", "FlipSigmas",
                     "SetFirstSigma", "ExtendIntermediateSigmas", "SamplingPercentToSigma"}
    assert len(SIGMAS) == 52 and len(PERCENT) == 6
    assert SIGMAS["split_20/1"].shape == (0,) and SIGMAS["splitden_0/0"].shape == (0,)


@pytest.mark.parametrize("key", sorted(SIGMAS))
def test_sigmas_match_comfyui(outputs, key):
    got, want = outputs[key], SIGMAS[key]
    assert isinstance(got, torch.Tensor) and got.shape == want.shape
    if want.numel() and want.abs().max() > 0:
        err = (got.float() - want).abs().max().item() / want.abs().max().item()
        assert err <= 1e-6, f"relative error {err:.3g}"
    else:  # empty, or only the final 0
        assert torch.equal(got.float(), want)


@pytest.mark.parametrize("key", sorted(PERCENT))
def test_percent_to_sigma_matches_comfyui(outputs, key):
    got, want = outputs[key], PERCENT[key]
    assert type(got).__name__ == want["type"] == "float"
    assert got == pytest.approx(want["value"], rel=1e-6, abs=0.0)
