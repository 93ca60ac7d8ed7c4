"""SamplerLCMUpscale (LCM that grows the latent between steps) against ComfyUI 0.3.64 on the tiny
SD1 checkpoint through SamplerCustomAdvanced: the prompt ComfyUI ran is
tests/fixtures/comfy_reference/leftovers16/lcm_upscale.json, its latents lcm_upscale.safetensors
(README.md there). Plus the sizes it steps through, its noise stream and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor
from latentgraph.nodes import create_registry
from latentgraph.nodes.custom_sampling import SamplerLCMUpscale
from latentgraph.sampling.lcm_upscale import sample_lcm_upscale, upscale_sizes
from conftest import FIXTURES
from parity import as_latentgraph, tiny_env

REF = FIXTURES / "comfy_reference"
HERE = REF / "leftovers16"
PROMPT = json.loads((HERE / "lcm_upscale.json").read_text())
LATENTS = load_file(HERE / "lcm_upscale.safetensors")
RUNS = sorted(k.split("/", 1)[1] for k in LATENTS if not k.endswith("_denoised"))


def latentgraph_prompt() -> dict:
    """ComfyUI's prompt with CheckpointLoaderSimple for the oracle-only loader, without the sinks."""
    return as_latentgraph(PROMPT, drop=("SaveLatent",))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("lcm_upscale"))


@pytest.fixture(scope="module")
def results(env):
    run = Executor(create_registry(), env).run(latentgraph_prompt(), targets=[f"{r}_s" for r in RUNS])
    out = {}
    for r in RUNS:
        out[r] = run.get(f"{r}_s", 0)["samples"]
        out[f"{r}_denoised"] = run.get(f"{r}_s", 1)["samples"]
    return out


def test_the_fixture_holds_every_run():
    assert len(RUNS) == 8 and len(LATENTS) == 16
    assert {LATENTS[f"lcm/{r}"].shape[-1] for r in RUNS} == {8, 10, 11, 12, 14, 16}


@pytest.mark.parametrize("key", sorted(k.split("/", 1)[1] for k in LATENTS))
def test_matches_comfyui(results, key):
    out, ref = results[key], LATENTS[f"lcm/{key}"]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"relative error {err:.3g}"


def test_sizes_follow_linspace_and_round_half_to_even():
    assert upscale_sizes(8, 8, 6, 1.5, None) == [(9, 9), (11, 11), (12, 12)]  # about half of 5 steps
    assert upscale_sizes(8, 8, 6, 1.5, 50) == [(9, 9), (9, 9), (10, 10), (11, 11), (11, 11), (12, 12)]
    assert upscale_sizes(8, 6, 6, 2.0, 2) == [(12, 9), (16, 12)]
    assert upscale_sizes(8, 8, 6, 2.0, 0) == []  # no resizing: plain LCM with this sampler's noise
    assert upscale_sizes(3, 5, 2, 1.5, 1) == [(4, 8)]  # 4.5 -> 4, 7.5 -> 8, as Python's round
    assert [f for f in np.linspace(1.0, 1.5, 4)[1:]] == [1.0 + 0.5 / 3, 1.0 + 1.0 / 3, 1.5]


def test_noise_continues_the_initial_noise_stream():
    """ComfyUI's step noise comes after the initial noise's draw on the generator it seeded."""
    x = torch.zeros(1, 4, 2, 2)
    seen = []
    out = sample_lcm_upscale(lambda x, sigma, **_: torch.zeros_like(x), x, torch.tensor([3.0, 2.0, 0.0]),
                             extra_args={"seed": 5}, callback=lambda info: seen.append(info["x"]),
                             total_upscale=1.0, resize=lambda x, w, h: x)
    g = torch.Generator().manual_seed(5)
    torch.randn(1, 4, 2, 2, generator=g)
    assert torch.equal(seen[1], 2.0 * torch.randn(1, 4, 2, 2, generator=g))
    assert torch.equal(out, torch.zeros(1, 4, 2, 2))  # the last step lands on the prediction


def test_the_latent_grows_and_the_prediction_is_kept():
    sizes = []

    def model(x, sigma, **_):
        sizes.append(tuple(x.shape[-2:]))
        return torch.full_like(x, 0.25)

    nearest = lambda x, w, h: torch.nn.functional.interpolate(x, size=(h, w), mode="nearest-exact")  # noqa: E731
    out = sample_lcm_upscale(model, torch.zeros(2, 4, 4, 6), torch.tensor([4.0, 2.0, 1.0, 0.0]),
                             extra_args={"seed": 0}, total_upscale=2.0, resize=nearest)
    assert sizes == [(4, 6), (6, 9), (8, 12)]  # 3 steps: default 2 resizes (linspace 1, 1.5, 2)
    assert torch.equal(out, torch.full((2, 4, 8, 12), 0.25))


def test_a_mask_sized_for_the_start_is_a_named_error():
    def model(x, sigma, **_):
        if x.shape[-1] != 4:
            raise RuntimeError("The size of tensor a (6) must match the size of tensor b (4)")
        return x

    with pytest.raises(ValueError) as err:
        sample_lcm_upscale(model, torch.zeros(1, 4, 4, 4), torch.tensor([2.0, 1.0, 0.0]), extra_args={"seed": 0},
                           total_upscale=1.5, resize=lambda x, w, h: torch.zeros(1, 4, h, w))
    assert str(err.value) == (
        "SamplerLCMUpscale: at step 2 the latent is 6x6 (it started 4x4) and the model could not take it: "
        "The size of tensor a (6) must match the size of tensor b (4). A noise mask or an inpainting model's "
        "image is made for the starting size; sample those with scale_ratio 1")


def test_node_options_and_the_size_budget():
    choice = SamplerLCMUpscale(1.5, -1, "bislerp")
    assert choice.sampler_name == "lcm_upscale" and choice.sampler_function is sample_lcm_upscale
    opts = choice.extra_options
    assert (opts["total_upscale"], opts["upscale_steps"], opts["upscale_method"]) == (1.5, None, "bislerp")
    assert SamplerLCMUpscale(2.0, 3, "area").extra_options["upscale_steps"] == 3
    big = SamplerLCMUpscale(20.0, -1, "nearest-exact")
    called = []
    with pytest.raises(ValueError) as err:
        sample_lcm_upscale(lambda x, s, **_: called.append(1) or x, torch.zeros(64, 4, 160, 160),
                           torch.tensor([1.0, 0.0]), **big.extra_options)
    assert not called  # refused before the first step
    assert str(err.value) == ("SamplerLCMUpscale's scale_ratio 20.0 (a 3200x3200 latent) makes a latent of "
                              "9.8 GiB, which exceeds the limit tensor_bytes = 8 GiB")


def test_ui_widgets_map_to_the_inputs():
    """A UI workflow's SamplerLCMUpscale node (widgets_values as ComfyUI's frontend saves them)."""
    from latentgraph.graph.ui_format import map_widgets

    spec = create_registry().get("SamplerLCMUpscale")
    assert map_widgets(spec, [1.5, -1, "bislerp"]) == {"scale_ratio": 1.5, "scale_steps": -1,
                                                       "upscale_method": "bislerp"}
