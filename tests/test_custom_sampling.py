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
from safetensors.torch import load_file

from latentgraph.graph import Executor, Workflow
from latentgraph.nodes import create_registry
from latentgraph.nodes.custom_sampling import (AlignYourStepsScheduler, DisableNoise, ExponentialScheduler,
                                               ExtendIntermediateSigmas, FlipSigmas, GITSScheduler, LaplaceScheduler,
                                               PolyexponentialScheduler, RandomNoise, SamplerDPMPP_2M_SDE,
                                               SamplerER_SDE, SetFirstSigma, SplitSigmasDenoise, VPScheduler,
                                               perp_neg, tau_interval)
from latentgraph.sampling.ksampler import SamplerChoice, sampler_parts
from latentgraph.sampling.noise import prepare_noise
from latentgraph.sampling.sigma_lists import gits_noise_levels
from conftest import FIXTURES
from parity import as_latentgraph, tiny_env

REF = FIXTURES / "comfy_reference"
HERE = REF / "custom_sampling"
PROMPT = json.loads((HERE / "prompt.json").read_text())
LATENTS = load_file(HERE / "latents.safetensors")
SAVES = {n["inputs"]["samples"][0] if n["inputs"]["samples"][1] == 0 else "basic_den": nid[: -len("_save")]
         for nid, n in PROMPT.items() if n["class_type"] == "SaveLatent"}


def latentgraph_prompt() -> dict:
    """The prompt ComfyUI ran, without its SaveLatent sinks (the tests target the samplers)."""
    return as_latentgraph(PROMPT, drop=("SaveLatent",))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("custom_sampling"))


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
    assert len(LATENTS) == 43
    assert set(SAVES.values()) == set(LATENTS)


@pytest.mark.parametrize("key", sorted(LATENTS))
def test_run_matches_comfyui(results, key):
    close(results[key], LATENTS[key])


@pytest.mark.parametrize("key", sorted(set(LATENTS) - {"basic", "basic_den"}))
def test_every_run_differs_from_the_plain_one(key):
    """Each node really changed the result (by 10x the tolerance at least), so a match is not by chance.
    (The area runs are on a wider latent: they differ from the other guider's area run.)"""
    base = LATENTS[{"g_dual_area": "g_perpneg_area", "g_perpneg_area": "g_dual_area"}.get(key, "basic")]
    assert (LATENTS[key] - base).abs().max() > 1e-3 * base.abs().max()


def test_prompt_uses_every_node_of_the_fixture():
    """Every node whose declaration the object_info excerpt holds ran in the reference prompt,
    except SamplingPercentToSigma (a FLOAT, checked by value below)."""
    declared = set(json.loads((REF / "object_info_custom_sampling.json").read_text())["nodes"])
    classes = {n["class_type"] for n in PROMPT.values()}
    assert declared - classes == {"SamplingPercentToSigma"}


def test_random_noise_is_ksamplers_noise():
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    noise = RandomNoise(42)
    assert noise.seed == 42
    ref = load_file(REF / "noise.safetensors")
    assert torch.equal(noise.generate_noise(latent), ref["noise/seed_42/shape_1x4x8x8"])
    batch = {"samples": torch.zeros(3, 4, 8, 8), "batch_index": [0, 2, 2]}
    assert torch.equal(noise.generate_noise(batch), ref["noise/seed_42/batch_index_0_2_2"])
    assert torch.equal(noise.generate_noise(batch), prepare_noise(batch["samples"], 42, [0, 2, 2]))


def test_disable_noise_is_zeros_with_seed_0():
    noise = DisableNoise()
    out = noise.generate_noise({"samples": torch.ones(2, 4, 3, 5)})
    assert noise.seed == 0 and out.shape == (2, 4, 3, 5) and out.dtype == torch.float32
    assert torch.count_nonzero(out) == 0


def test_sampler_custom_advanced_equals_ksampler_exactly(env):
    """CFGGuider + RandomNoise + BasicScheduler + KSamplerSelect is KSampler, to the bit."""
    wf = Workflow.from_api(latentgraph_prompt())
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=42, steps=5, cfg=5.0, sampler_name="euler",
           scheduler="normal", positive="pos", negative="neg", latent_image="empty", denoise=1.0)
    wf.add("sc", "SamplerCustom", model="ckpt.MODEL", add_noise=True, noise_seed=42, cfg=5.0, positive="pos",
           negative="neg", sampler="sm_euler_ancestral", sigmas="basic_sigmas", latent_image="empty")
    run = Executor(create_registry(), env).run(wf, targets=["k", "basic_s", "sc", "sm_euler_ancestral_s"])
    assert torch.equal(run.get("k")["samples"], run.get("basic_s")["samples"])
    # SamplerCustom takes the same SAMPLER values (a name with options) as SamplerCustomAdvanced
    assert torch.equal(run.get("sc")["samples"], run.get("sm_euler_ancestral_s")["samples"])


def test_schedules_follow_their_formulas():
    exp = ExponentialScheduler(3, 14.614642, 0.0291675)
    torch.testing.assert_close(exp, torch.tensor([14.614642, math.sqrt(14.614642 * 0.0291675), 0.0291675, 0.0]))
    poly = PolyexponentialScheduler(3, 10.0, 0.1, 2.0)  # ramp [1, 1/4, 0] in log sigma
    torch.testing.assert_close(poly, torch.tensor([10.0, math.exp(0.25 * math.log(100) + math.log(0.1)), 0.1, 0.0]))
    vp = VPScheduler(2, 19.9, 0.1, 0.001)
    torch.testing.assert_close(vp, torch.tensor([math.sqrt(math.expm1(19.9 / 2 + 0.1)),
                                                 math.sqrt(math.expm1(19.9 * 1e-6 / 2 + 1e-4)), 0.0]))
    # Laplace: no trailing 0 (as ComfyUI); the ends are clamped to the range, the middle is exp(mu)
    torch.testing.assert_close(LaplaceScheduler(3, 14.614642, 0.0291675, 0.0, 0.5),
                               torch.tensor([14.614642, 1.0, 0.0291675]))


def test_align_your_steps():
    ten = AlignYourStepsScheduler("SD1", 10, 1.0)  # the published table itself, ending in 0
    assert ten.tolist() == torch.FloatTensor([14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520,
                                              1.8841921177, 1.3943805092, 0.9642583904, 0.6523686016,
                                              0.3977456272, 0.1515232662, 0.0]).tolist()
    half = AlignYourStepsScheduler("SD1", 4, 0.5)  # 4 steps log-interpolated, the last 2 kept
    assert half.shape == (3,) and half[-1] == 0
    torch.testing.assert_close(half[0], torch.tensor(1.3943805092))  # table point 5 of 10 = 2 of 4
    assert AlignYourStepsScheduler("SVD", 4, 0.0).numel() == 0


def test_gits_uses_the_published_lists():
    levels = gits_noise_levels()
    assert sorted(levels) == [f"{0.8 + 0.05 * i:.2f}" for i in range(15)]
    assert all(len(rows[i]) == i + 3 for rows in levels.values() for i in range(19))
    ten = GITSScheduler(1.2, 10, 1.0)
    assert ten.tolist() == torch.FloatTensor(levels["1.20"][8][:-1] + [0.0]).tolist()
    assert GITSScheduler(1.2, 30, 0.5).shape == (16,)  # 30 steps interpolated, the last 15 kept
    with pytest.raises(ValueError) as err:
        GITSScheduler(0.82, 10, 1.0)
    assert str(err.value).startswith("GITSScheduler: input 'coeff' must be one of 0.80, 0.85,")
    assert str(err.value).endswith("1.50, got 0.82")


def test_sigma_edits():
    torch.testing.assert_close(FlipSigmas(torch.tensor([3.0, 1.0, 0.0])), torch.tensor([0.0001, 1.0, 3.0]))
    assert FlipSigmas(torch.tensor([])).numel() == 0
    original = torch.tensor([4.0, 2.0, 1.0, 0.0])
    assert SetFirstSigma(original, 9.5).tolist() == [9.5, 2.0, 1.0, 0.0] and original[0] == 4.0
    # steps starting at a sigma >= 1.5 are halved, the others kept
    assert ExtendIntermediateSigmas(original, 2, -1.0, 1.5, "linear").tolist() == [4.0, 3.0, 2.0, 1.5, 1.0, 0.0]
    assert ExtendIntermediateSigmas(original, 2, 3.0, 0.0, "linear").tolist() == [4.0, 2.0, 1.5, 1.0, 0.5, 0.0]
    cosine = ExtendIntermediateSigmas(original, 3, -1.0, 3.0, "cosine")
    expected = [4 - 2 * math.sin(math.pi / 6), 4 - 2 * math.sin(math.pi / 3)]
    torch.testing.assert_close(cosine[1:3], torch.tensor(expected))
    high, low = SplitSigmasDenoise(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), 0.5)
    assert high.tolist() == [4.0, 3.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = SplitSigmasDenoise(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]), 0.0)
    assert high.numel() == 0 and low.tolist() == [0.0]  # ComfyUI's sigmas[:-0]


def test_sampler_nodes_carry_their_options():
    choice = SamplerDPMPP_2M_SDE("heun", 0.7, 1.0, "cpu")
    assert sampler_parts(choice) == ("dpmpp_2m_sde", {"eta": 0.7, "s_noise": 1.0, "solver_type": "heun"})
    assert SamplerDPMPP_2M_SDE("midpoint", 1.0, 1.0, "gpu").sampler_name == "dpmpp_2m_sde_gpu"
    assert sampler_parts("euler") == ("euler", {})
    assert SamplerChoice("lms", {"order": 3}).extra_options == {"order": 3}


def test_er_sde_and_sa_solver_options():
    ode = SamplerER_SDE("ODE", 3, 1.0, 1.0)
    assert ode.sampler_name == "er_sde" and sorted(ode.extra_options) == ["max_stage", "noise_scaler", "s_noise"]
    assert ode.extra_options["s_noise"] == 0.0 and ode.extra_options["max_stage"] == 3  # the ODE: no noise
    assert ode.extra_options["noise_scaler"](torch.tensor(0.5)) == 0.5  # eta 0: x ** 1
    reverse = SamplerER_SDE("Reverse-time SDE", 2, 1.0, 0.9).extra_options
    assert reverse["s_noise"] == 0.9 and reverse["noise_scaler"](torch.tensor(0.5)) == 0.25
    assert SamplerER_SDE("ER-SDE", 1, 5.0, 0.9).extra_options == {"s_noise": 0.9, "noise_scaler": None,
                                                                  "max_stage": 1}
    tau = tau_interval(10.0, 1.0, 0.7)
    assert [tau(s) for s in (11.0, 10.0, 5.0, 1.0, 0.5)] == [0.0, 0.7, 0.7, 0.7, 0.0]
    assert tau_interval(10.0, 1.0, 0.0)(5.0) == 0.0


def test_perp_neg_removes_only_the_perpendicular_part():
    empty = torch.zeros(1, 1, 1, 2)
    pos = torch.tensor([[[[1.0, 0.0]]]])
    parallel = torch.tensor([[[[3.0, 0.0]]]])
    # a negative along the positive direction changes nothing: plain cfg on the positive
    assert perp_neg(pos, parallel, empty, 1.0, 5.0).tolist() == [[[[5.0, 0.0]]]]
    mixed = torch.tensor([[[[3.0, 2.0]]]])  # perpendicular part (0, 2), pushed away by neg_scale 0.5
    assert perp_neg(pos, mixed, empty, 0.5, 5.0).tolist() == [[[[5.0, -5.0]]]]


def test_sampling_percent_to_sigma(env):
    wf = Workflow.from_api(latentgraph_prompt())
    for name, percent, actual in (("p0", 0.0, False), ("p0a", 0.0, True), ("p1a", 1.0, True), ("half", 0.5, False)):
        wf.add(name, "SamplingPercentToSigma", model="ckpt.MODEL", sampling_percent=percent,
               return_actual_sigma=actual)
    run = Executor(create_registry(), env).run(wf, targets=["p0", "p0a", "p1a", "half"])
    # SD1's scaled-linear betas; sigma = sqrt((1 - alpha_bar) / alpha_bar), log-interpolated between timesteps
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alpha_bar = torch.cumprod(1 - betas, 0)
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    assert run.get("p0") == 999999999.9  # "before the start" for timestep ranges, as ComfyUI
    assert run.get("p0a") == pytest.approx(float(sigmas[-1]), rel=1e-6)
    assert run.get("p1a") == pytest.approx(float(sigmas[0]), rel=1e-6)
    assert run.get("half") == pytest.approx(math.sqrt(sigmas[499] * sigmas[500]), rel=1e-5)


@pytest.mark.parametrize("node_name,call,message", [
    ("ExponentialScheduler", lambda: ExponentialScheduler(5, 14.6, 0.0),
     "ExponentialScheduler: input 'sigma_min' must be above 0 for a log-spaced schedule, got 0.0"),
    ("LaplaceScheduler", lambda: LaplaceScheduler(5, 0.0, 0.1, 0.0, 0.5),
     "LaplaceScheduler: input 'sigma_max' must be above 0 for a log-spaced schedule, got 0.0"),
    ("SetFirstSigma", lambda: SetFirstSigma(torch.tensor([]), 1.0),
     "SetFirstSigma: input 'sigmas' is empty: there is no first sigma to set"),
])
def test_bad_values_are_named(node_name, call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert str(err.value) == message


def test_a_bad_value_stops_the_run_naming_node_and_input(env):
    from latentgraph.graph.errors import NodeExecutionError
    wf = Workflow.from_api(latentgraph_prompt())
    wf.add("zero", "ExponentialScheduler", steps=5, sigma_max=14.6, sigma_min=0.0)
    wf.add("bad", "SamplerCustomAdvanced", noise="seed42", guider="cfg", sampler="euler", sigmas="zero",
           latent_image="empty")
    with pytest.raises(NodeExecutionError) as err:
        Executor(create_registry(), env).run(wf, targets=["bad"])
    assert (err.value.node_id, err.value.class_type) == ("zero", "ExponentialScheduler")
    assert str(err.value.exception) == ("ExponentialScheduler: input 'sigma_min' must be above 0 for a "
                                        "log-spaced schedule, got 0.0")


def test_ui_widgets_map_to_the_inputs():
    """A UI workflow's widgets_values (as ComfyUI's frontend saves them: the seed followed by its
    control_after_generate mode) land on the inputs of the API prompt."""
    from latentgraph.graph.ui_format import map_widgets
    registry = create_registry()
    assert map_widgets(registry.get("RandomNoise"), [42, "randomize"]) == {"noise_seed": 42}
    assert map_widgets(registry.get("SamplerDPMPP_2M_SDE"), ["heun", 0.7, 1.0, "cpu"]) == {
        "solver_type": "heun", "eta": 0.7, "s_noise": 1.0, "noise_device": "cpu"}
    assert map_widgets(registry.get("DualCFGGuider"), [5.0, 3.0, "nested"]) == {
        "cfg_conds": 5.0, "cfg_cond2_negative": 3.0, "style": "nested"}
    assert map_widgets(registry.get("DisableNoise"), []) == {}


def test_an_empty_schedule_returns_the_latent(env):
    """SplitSigmasDenoise at denoise 0 gives no steps: the latent comes back unchanged (ComfyUI
    fails there with an IndexError)."""
    wf = Workflow.from_api(latentgraph_prompt())
    wf.add("none", "SplitSigmasDenoise", sigmas="basic_sigmas", denoise=0.0)
    wf.add("s", "SamplerCustomAdvanced", noise="seed42", guider="cfg", sampler="euler", sigmas="none.high_sigmas",
           latent_image="basic_s.output")
    run = Executor(create_registry(), env).run(wf, targets=["s", "basic_s", "none"])
    assert run.get("none", 0).numel() == 0
    assert torch.equal(run.get("s")["samples"], run.get("basic_s")["samples"])
    assert torch.equal(run.get("s", 1)["samples"], run.get("basic_s")["samples"])
