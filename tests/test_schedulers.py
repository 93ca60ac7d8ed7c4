"""Sigma schedules against ComfyUI's (tests/fixtures/comfy_reference/sigmas.json, README section 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from latentgraph.sampling.schedule import DiscreteSchedule
from latentgraph.sampling.schedulers import (DISCARD_PENULTIMATE, SCHEDULER_NAMES, SCHEDULERS, compute_sigmas,
                                             exponential_sigmas, karras_sigmas, sd_turbo_sigmas)

REF = json.loads((Path(__file__).parent / "fixtures" / "comfy_reference" / "sigmas.json").read_text())


@pytest.fixture(scope="module")
def eps() -> DiscreteSchedule:
    return DiscreteSchedule("eps")


def _ref(values: list) -> torch.Tensor:
    return torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float32)


def _mismatch(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when equal, or within 1e-6 relative, with NaN where ComfyUI has NaN."""
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not torch.equal(got.isnan(), want.isnan()):
        return "NaN positions differ"
    ok = ~want.isnan()
    if not torch.allclose(got[ok].double(), want[ok].double(), rtol=1e-6, atol=0.0):
        return f"{got.tolist()} != {want.tolist()}"
    return None


def _check_all(schedule: DiscreteSchedule) -> tuple[int, list[str]]:
    problems = []
    for e in REF["schedules_eps"]:
        got = compute_sigmas(schedule, e["scheduler"], e["steps"], e["denoise"], e["sampler_name"])
        problem = _mismatch(got, _ref(e["sigmas"]))
        if problem is not None:
            problems.append(f"{e['scheduler']} steps={e['steps']} denoise={e['denoise']} {e['sampler_name']}: {problem}")
    return len(REF["schedules_eps"]), problems


def test_every_reference_schedule_matches(eps):
    # Within 1e-6 relative, not bit for bit: the last bits of float32 pow/exp/log differ between
    # torch builds (torch 2.13's CPU build matches ComfyUI's bits on all 648; 2.14.1's on 553).
    total, problems = _check_all(eps)
    assert total == 648
    assert not problems, "\n".join(problems[:20])


def test_v_prediction_gives_identical_sigmas(eps):
    assert REF["v_prediction"]["sigmas_identical_to_eps"]
    v = DiscreteSchedule("v")
    total, problems = _check_all(v)
    assert not problems
    # against our own eps schedule on the same torch build the sigmas are bit-identical
    for e in REF["schedules_eps"]:
        args = (e["scheduler"], e["steps"], e["denoise"], e["sampler_name"])
        assert torch.equal(compute_sigmas(v, *args).nan_to_num(-1.0), compute_sigmas(eps, *args).nan_to_num(-1.0))


def test_kl_optimal_one_step_is_nan_as_in_comfyui(eps):
    sigmas = compute_sigmas(eps, "kl_optimal", 1)
    assert math.isnan(sigmas[0]) and sigmas[1] == 0


def test_sigma_tables(eps):
    assert torch.equal(eps.sigmas, torch.tensor(REF["sigma_table_1000"], dtype=torch.float32))
    assert torch.equal(eps.log_sigmas, torch.tensor(REF["log_sigma_table_1000"], dtype=torch.float32))
    assert eps.sigmas.dtype == torch.float32 and eps.sigmas.shape == (1000,)
    assert float(eps.sigma_min) == REF["sigma_min"]
    assert float(eps.sigma_max) == REF["sigma_max"]


def test_timesteps_and_input_scaling(eps):
    for e in REF["normal_20_timesteps"]:
        sigma = torch.tensor(e["sigma"])
        t = eps.timestep(sigma)
        assert t.dtype == torch.float32
        assert t.item() == e["timestep_index"] == e["t_float_passed_to_unet"]
        c_in = eps.calculate_input(sigma, torch.ones(1, 1, 1, 1)).item()
        assert c_in == pytest.approx(1 / math.sqrt(e["sigma"] ** 2 + 1), rel=1e-6)
        # The fixture's "c_in_eps" is calculate_input with its arguments swapped (sigma 1,
        # input sigma) = sigma / sqrt(2), not the 1/sqrt(sigma^2+1) its note describes; it
        # still pins ComfyUI's formula, so check it for what it is.
        assert eps.calculate_input(torch.tensor(1.0), torch.tensor([e["sigma"]])).item() == e["c_in_eps"]


def test_timestep_batch_and_sigma_round_trip(eps):
    sigmas = eps.sigmas[[0, 10, 500, 999]]
    assert eps.timestep(sigmas).tolist() == [0.0, 10.0, 500.0, 999.0]
    # at whole timesteps sigma() is exp(log_sigma): the table value to within float rounding
    back = eps.sigma(torch.tensor([0.0, 10.0, 500.0, 999.0]))
    assert torch.equal(back, eps.log_sigmas[[0, 10, 500, 999]].exp())
    assert torch.allclose(back, sigmas, rtol=1e-6, atol=0)
    # log-linear between table entries
    mid = eps.sigma(torch.tensor(10.5))
    assert mid.log().item() == pytest.approx((eps.log_sigmas[10] + eps.log_sigmas[11]).item() / 2, rel=1e-6)


def test_percent_to_sigma(eps):
    for p, want in REF["percent_to_sigma"].items():
        assert eps.percent_to_sigma(float(p)) == want
    assert eps.percent_to_sigma(-0.5) == 999999999.9 and eps.percent_to_sigma(2.0) == 0.0


def test_prediction_types():
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([2.0, 0.5])
    s = sigma.view(2, 1, 1, 1)
    assert torch.allclose(DiscreteSchedule("eps").calculate_denoised(sigma, out, x), x - out * s)
    want_v = x / (s ** 2 + 1) - out * s / (s ** 2 + 1).sqrt()
    assert torch.allclose(DiscreteSchedule("v").calculate_denoised(sigma, out, x), want_v)
    with pytest.raises(ValueError, match="eps"):
        DiscreteSchedule("edm")  # x0 became a prediction type with issue 15


def test_noise_scaling(eps):
    noise, latent = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.5)
    sigma = torch.tensor(3.0)
    assert torch.allclose(eps.noise_scaling(sigma, noise, latent, max_denoise=False), 3.0 * noise + latent)
    assert torch.allclose(eps.noise_scaling(sigma, noise, latent, max_denoise=True), math.sqrt(10) * noise + latent)
    assert eps.inverse_noise_scaling(sigma, latent) is latent


def test_zero_terminal_snr():
    z = DiscreteSchedule("v", zsnr=True)
    plain = DiscreteSchedule("v")
    # alpha_bar_T pinned to 4.8973451890853435e-08 -> sigma_max = sqrt((1 - a) / a)
    assert float(z.sigma_max) == pytest.approx(math.sqrt((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08),
                                               rel=1e-6)
    assert float(z.sigma_min) == pytest.approx(float(plain.sigma_min), rel=1e-5)  # first step keeps its SNR
    assert bool((z.sigmas[1:] > z.sigmas[:-1]).all())
    assert compute_sigmas(z, "karras", 5)[0].item() == pytest.approx(float(z.sigma_max), rel=1e-5)


def test_registry_order_and_errors(eps):
    assert SCHEDULER_NAMES == REF["scheduler_names"] == list(SCHEDULERS)
    assert DISCARD_PENULTIMATE == set(REF["discard_penultimate_sigma_samplers"])
    with pytest.raises(ValueError, match="karras"):
        compute_sigmas(eps, "nope", 10)


def test_denoise_edges(eps):
    assert compute_sigmas(eps, "normal", 10, denoise=0.0).numel() == 0
    assert compute_sigmas(eps, "normal", 10, denoise=-1.0).numel() == 0
    assert torch.equal(compute_sigmas(eps, "normal", 10, denoise=None), compute_sigmas(eps, "normal", 10))
    assert torch.equal(compute_sigmas(eps, "normal", 10, denoise=0.99995), compute_sigmas(eps, "normal", 10))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_schedules_decrease_to_zero(eps, scheduler):
    sigmas = compute_sigmas(eps, scheduler, 12)
    assert sigmas[-1] == 0 and len(sigmas) >= 12
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_karras_and_exponential():
    k = karras_sigmas(8, 0.1, 10.0, rho=7.0)
    assert k.shape == (9,) and k[-1] == 0
    assert k[0].item() == pytest.approx(10.0, rel=1e-6) and k[-2].item() == pytest.approx(0.1, rel=1e-5)
    ramp = k[:-1] ** (1 / 7)  # evenly spaced in sigma^(1/rho)
    assert torch.allclose(ramp[1:] - ramp[:-1], (ramp[1] - ramp[0]).expand(7), atol=1e-5)
    e = exponential_sigmas(5, 0.1, 10.0)
    assert torch.allclose(e[:-1].log(), torch.linspace(math.log(10.0), math.log(0.1), 5), atol=1e-6) and e[-1] == 0


def test_sd_turbo(eps):
    table = eps.log_sigmas.exp()  # sigma() at whole timesteps
    assert torch.equal(sd_turbo_sigmas(eps, 1, 1.0), torch.stack([table[999], torch.tensor(0.0)]))
    s = sd_turbo_sigmas(eps, 4, 1.0)
    assert torch.equal(s[:-1], table[[999, 899, 799, 699]]) and s[-1] == 0
    assert torch.equal(sd_turbo_sigmas(eps, 2, 0.5)[:-1], table[[499, 399]])
