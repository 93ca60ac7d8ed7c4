"""Seeded noise: prepare_noise against ComfyUI's (tests/fixtures/comfy_reference/noise.*, README
section 1) and the samplers' step-noise sources."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.sampling.noise import brownian_noise_sampler, cpu_noise_sampler, prepare_noise

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_reference"
INDEX = json.loads((FIXTURES / "noise.json").read_text())
TENSORS = load_file(str(FIXTURES / "noise.safetensors"))


def _latent_for(entry: dict) -> torch.Tensor:
    """The latent ComfyUI was given: its (B, C, H, W); with batch_index only C, H, W matter."""
    return torch.zeros(entry["shape"])


@pytest.mark.parametrize("entry", INDEX["entries"], ids=[e["key"] for e in INDEX["entries"]])
def test_prepare_noise_bit_identical(entry):
    noise = prepare_noise(_latent_for(entry), entry["seed"], entry["batch_index"])
    want = TENSORS[entry["key"]]
    assert noise.dtype == torch.float32 and noise.device.type == "cpu"
    assert torch.equal(noise, want)


def test_every_stored_key_is_covered():
    assert {e["key"] for e in INDEX["entries"]} == set(TENSORS)
    assert len(TENSORS) == 33


def test_global_rng_untouched():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    prepare_noise(torch.zeros(2, 4, 8, 8), 42)
    prepare_noise(torch.zeros(2, 4, 8, 8), 42, [1, 0])
    sampler = cpu_noise_sampler(torch.zeros(1, 4, 8, 8), 7)
    sampler(torch.tensor(1.0), torch.tensor(0.5))
    assert torch.equal(torch.get_rng_state(), state)


def test_batch_index_semantics():
    latent = torch.zeros(1, 4, 8, 8)
    draws = prepare_noise(torch.zeros(4, 4, 8, 8), 5, [0, 1, 2, 3])
    picked = prepare_noise(latent, 5, [2, 0, 2])
    assert torch.equal(picked, draws[[2, 0, 2]])
    # C*H*W a multiple of 16: one full draw equals the per-image draws (README section 1)
    assert torch.equal(prepare_noise(torch.zeros(4, 4, 8, 8), 5), draws)


def test_full_draw_differs_from_per_image_draws_when_not_multiple_of_16():
    full = TENSORS["noise/seed_42/shape_2x4x9x9"]
    per_image = TENSORS["noise/seed_42/shape_2x4x9x9_batch_index_0_1"]
    assert not torch.equal(full, per_image)
    # image 0 of the per-image recipe is a single-image draw
    assert torch.equal(per_image[:1], TENSORS["noise/seed_42/shape_1x4x9x9"])


def test_cpu_noise_sampler_stream():
    x = torch.zeros(2, 4, 8, 8)
    sampler = cpu_noise_sampler(x, 42)
    g = torch.Generator().manual_seed(42)
    for _ in range(3):
        assert torch.equal(sampler(torch.tensor(1.0), torch.tensor(0.5)), torch.randn(x.shape, generator=g))
    half = cpu_noise_sampler(x.half(), 42)(torch.tensor(1.0), torch.tensor(0.5))
    assert half.dtype == torch.float16
    assert not torch.equal(cpu_noise_sampler(x, 43)(1.0, 0.5), cpu_noise_sampler(x, 42)(1.0, 0.5))


def test_brownian_noise_sampler():
    x = torch.zeros(64, 4, 8, 8)
    s0, s1, s2 = torch.tensor(4.0), torch.tensor(1.5), torch.tensor(0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = brownian_noise_sampler(x, torch.tensor(0.1), torch.tensor(10.0), seed=3)
        b = brownian_noise_sampler(x, torch.tensor(0.1), torch.tensor(10.0), seed=3)
        n01, n12, n02 = a(s0, s1), a(s1, s2), a(s0, s2)
        assert torch.equal(b(s0, s1), n01)  # reproducible for the same seed
        assert not torch.equal(brownian_noise_sampler(x, 0.1, 10.0, seed=4)(s0, s1), n01)
    assert n01.shape == x.shape and n01.dtype == torch.float32
    assert n01.std().item() == pytest.approx(1.0, abs=0.05)
    # increments of one Brownian path add up: W(s2) - W(s0) = (W(s1) - W(s0)) + (W(s2) - W(s1))
    whole = n02 * (s0 - s2).sqrt()
    parts = n01 * (s0 - s1).sqrt() + n12 * (s1 - s2).sqrt()
    assert torch.allclose(whole, parts, atol=1e-4)
