"""The samplers issue 16 added (CFG++, RES multistep, dpmpp_2m_sde_heun, gradient estimation,
ER-SDE, SEEDS, SA-Solver) against ComfyUI 0.3.64's latents on the tiny SD1 checkpoint, through
the real KSampler node (tests/fixtures/comfy_reference/samplers16/README.md), and their parts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.sampling.cfg_pp import sample_euler_cfg_pp
from latentgraph.sampling.sa_solver import adams_b_coeffs, exponential_coeffs, sample_sa_solver, tau_interval
from latentgraph.sampling.schedule import DiscreteSchedule
from test_sampling_parity import REF, executor, graph, img2img, ksampler, samples  # noqa: F401 (executor: a fixture)

HERE = REF / "samplers16"
LATENTS = load_file(HERE / "latents.safetensors")
RUNS = sorted(key.split("/", 1)[1] for key in LATENTS)


def _settings(run: str) -> tuple[str, str, float]:
    """(sampler, scheduler, cfg) of a reference run, as prompt.json has it."""
    prompt = json.loads((HERE / "prompt.json").read_text())
    inputs = prompt[f"{run}_k"]["inputs"]
    return inputs["sampler_name"], inputs["scheduler"], inputs["cfg"]


def test_the_reference_covers_every_new_sampler():
    assert len(RUNS) == 22
    new = {_settings(run)[0] for run in RUNS}
    assert len(new) == 17 and "sa_solver_pece" in new and "dpmpp_2m_sde_heun_gpu" in new


@pytest.mark.filterwarnings("ignore:Should have")  # torchsde's rounding notice (dpmpp_2m_sde_heun), as in ComfyUI
@pytest.mark.parametrize("run", RUNS)
def test_matches_comfyui(executor, run):  # noqa: F811
    sampler, scheduler, cfg = _settings(run)
    wf = graph()
    ksampler(wf, sampler, scheduler, cfg=cfg)
    out, ref = samples(executor, wf), LATENTS[f"sample/{run}"]
    assert out.shape == ref.shape == (1, 4, 8, 8)
    # the bound: within 1e-4 of the latent's largest value (fp32 CPU runs agree to ~4e-6)
    assert (out - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


def test_cfg_pp_needs_a_denoiser_that_reports_the_uncond_prediction():
    x, sigmas = torch.ones(1, 4, 2, 2), torch.tensor([2.0, 1.0, 0.0])
    with pytest.raises(ValueError) as err:
        sample_euler_cfg_pp(lambda x, sigma, **_: x * 0.5, x, sigmas)
    assert str(err.value) == ("a cfg_pp sampler needs a guided denoiser that calls model_options' "
                              "sampler_post_cfg_function (the KSampler's CFG); this model did not")


def test_cfg_pp_leaves_the_callers_model_options_alone():
    mine = lambda args: args["denoised"]  # noqa: E731
    options = {"sampler_post_cfg_function": [mine]}
    seen = []

    def model(x, sigma, model_options=None, **_):
        seen.append(model_options)
        denoised = x * 0.5
        for fn in model_options["sampler_post_cfg_function"]:
            denoised = fn({"denoised": denoised, "uncond_denoised": x * 0.25})
        return denoised

    x, sigmas = torch.ones(1, 4, 2, 2), torch.tensor([2.0, 1.0, 0.0])
    out = sample_euler_cfg_pp(model, x, sigmas, extra_args={"model_options": options})
    assert options == {"sampler_post_cfg_function": [mine]}  # not extended in place
    assert len(seen) == 2 and seen[0]["sampler_post_cfg_function"][0] is mine
    assert seen[0]["disable_cfg1_optimization"] is True
    # step 1: d = (1 - 0.25) / 2, x = 0.5 + 1 * d = 0.875; step 2 (to 0): x = 0.875 / 2
    assert torch.equal(out, torch.full((1, 4, 2, 2), 0.4375))


def test_sa_solver_tau_interval():
    tau = tau_interval(10.0, 1.0)
    assert [tau(torch.tensor(v)) for v in (11.0, 10.0, 5.0, 1.0, 0.5)] == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert tau_interval(10.0, 1.0, eta=0.0)(5.0) == 0.0
    schedule = DiscreteSchedule()  # the default window: SD's sigmas at 20% and 80% of the way
    assert schedule.percent_to_sigma(0.2) == pytest.approx(5.0924082, rel=1e-6)
    assert schedule.percent_to_sigma(0.8) == pytest.approx(0.5711889, rel=1e-6)


@pytest.mark.parametrize("tau", [0.0, 0.7])
def test_sa_solver_exponential_coefficients_are_the_integrals(tau):
    """(1 + tau^2) int_s^t e^((1 + tau^2)(x - t)) x^p dx, by the trapezoid rule on a fine grid."""
    s, t = torch.tensor(-1.2, dtype=torch.float64), torch.tensor(-0.4, dtype=torch.float64)
    got = exponential_coeffs(s, t, 3, tau)
    grid = torch.linspace(-1.2, -0.4, 20001, dtype=torch.float64)
    k = 1 + tau ** 2
    want = [k * torch.trapezoid(torch.exp(k * (grid - t)) * grid ** p, grid) for p in range(3)]
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-7, atol=1e-9)


def test_sa_solver_b_coeffs_of_a_constant_prediction_sum_to_the_exact_step():
    """For one constant prediction the Adams weights must integrate it exactly:
    sum b = alpha_t (1 - e^(-(1 + tau^2) h)) with alpha = sigma e^lambda."""
    lambdas = torch.tensor([-1.0, -0.6, -0.3], dtype=torch.float64)
    lam_s, lam_t, tau = lambdas[-1], torch.tensor(0.1, dtype=torch.float64), 0.5
    sigma_next = (-lam_t).exp()
    b = adams_b_coeffs(sigma_next, lambdas, lam_s, lam_t, tau)
    want = sigma_next * lam_t.exp() * (1 - torch.exp(-(1 + tau ** 2) * (lam_t - lam_s)))
    assert b.shape == (3,)
    assert b.sum().item() == pytest.approx(want.item(), rel=1e-10)


def test_sa_solver_without_noise_is_deterministic_and_seed_free():
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0)) * 10
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5, 0.0])

    def run(seed, s_noise):
        return sample_sa_solver(lambda x, sigma, **_: x * 0.3, x, sigmas, extra_args={"seed": seed}, s_noise=s_noise)

    assert torch.equal(run(1, 0.0), run(2, 0.0))
    assert not torch.equal(run(1, 1.0), run(2, 1.0))  # sigmas 5..1 lie in tau's window: noise is drawn


def test_cfg_pp_through_an_inpainting_mask_keeps_the_unmasked_latent(executor):  # noqa: F811
    """The masked denoiser passes the sampler's own options on (else the uncond is never seen)."""
    wf = graph()
    img2img(wf)
    wf.add("mask", "FixtureMask")
    wf.add("masked", "SetLatentNoiseMask", samples="enc", mask="mask")
    ksampler(wf, "res_multistep_cfg_pp", latent="masked")
    res = executor.run(wf, targets=["k", "enc"])
    out, original = res.get("k")["samples"], res.get("enc")["samples"]
    # the mask is 1 on the left half (4 latent columns): the right half is the input
    torch.testing.assert_close(out[..., 4:], original[..., 4:], rtol=0, atol=1e-5)
    assert (out[..., :4] - original[..., :4]).abs().max().item() > 0.05
