"""The model-patch nodes (FreeU, FreeU_V2, RescaleCFG, CFGZeroStar, APG, DifferentialDiffusion,
ModelSamplingDiscrete x0/img_to_img/lcm) against ComfyUI 0.3.64 on the tiny SD1 checkpoint:
the API prompt ComfyUI ran is tests/fixtures/comfy_reference/model_patches/prompt.json and
its latents are latents.safetensors there (README.md in that folder). Then unit checks of each
patch function on hand-made tensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor
from latentgraph.nodes import create_registry
from latentgraph.nodes.model_patches import (
    APG, CFGZeroStar, DifferentialDiffusion, FreeU, FreeU_V2, RescaleCFG, apg_function, cfg_zero_star,
    differential_mask, fourier_filter, rescale_cfg, zero_star_scale)
from latentgraph.sampling.guidance import cfg_function
from latentgraph.sampling.schedule import DiscreteSchedule, LCMSchedule
from conftest import FIXTURES
from parity import as_latentgraph, tiny_env

REF = FIXTURES / "comfy_reference"
HERE = REF / "model_patches"
PROMPT = json.loads((HERE / "prompt.json").read_text())
LATENTS = load_file(HERE / "latents.safetensors")
PATCHED = ["freeu", "freeu_v2", "rescale_cfg", "cfg_zero_star", "apg", "msd_x0", "msd_img_to_img", "msd_lcm",
           "msd_lcm_sampler", "msd_lcm_zsnr"]
MASKED = ["diffdiff", "diffdiff_half"]


def latentgraph_prompt() -> dict:
    """The prompt ComfyUI ran, without its SaveLatent sinks (the tests target the KSamplers)."""
    return as_latentgraph(PROMPT, drop=("SaveLatent",))


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every KSampler of the prompt, run once in latentgraph."""
    env = tiny_env(tmp_path_factory.mktemp("model_patches"))
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


# -- declarations: what /object_info shows matches ComfyUI's ----------------------------------

def _normal(name: str, info: dict) -> dict:
    """ComfyUI's V3 nodes write a socket as [type, {}] and leave display_name None (the client
    then shows the id); a combo's first choice is its default whether or not it is written."""
    def entry(e):
        if len(e) == 2 and e[1] == {}:
            return e[:1]
        if isinstance(e[0], list) and len(e) == 2 and e[1].get("default") == e[0][0]:
            opts = {k: v for k, v in e[1].items() if k != "default"}
            return [e[0], opts] if opts else e[:1]
        return e
    out = dict(info)
    out["input"] = {group: {k: entry(v) for k, v in inputs.items()} for group, inputs in info["input"].items()}
    out["display_name"] = info["display_name"] or name
    return out


def test_declarations_match_comfyui_object_info():
    comfy = json.loads((HERE / "object_info.json").read_text())
    ours = create_registry().object_info()
    assert len(comfy) == 7
    for name, theirs in comfy.items():
        mine = {k: ours[name][k] for k in theirs}
        assert _normal(name, mine) == _normal(name, theirs), name


# -- unit checks ------------------------------------------------------------------------------

def tiny_model():
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.unet import UNetModel
    from latentgraph.nodes.sd import SDModel, schedule_for

    arch = tiny_architecture("sd15")  # model_channels 32
    torch.manual_seed(0)
    return SDModel(UNetModel(arch.unet).eval(), arch, schedule_for(arch), None)


def test_fourier_filter_scales_only_the_lowest_frequencies():
    # a constant (DC only) plus a checkerboard (the highest frequency): the filter's window
    # holds DC, so scale s gives s * constant + the checkerboard untouched
    i = torch.arange(8)
    checker = ((-1.0) ** (i[:, None] + i[None, :])).expand(1, 2, 8, 8)
    x = 3.0 + checker
    out = fourier_filter(x, 1, 0.25)
    torch.testing.assert_close(out, 0.75 + checker, atol=1e-6, rtol=0)
    torch.testing.assert_close(fourier_filter(x, 1, 1.0), x, atol=1e-6, rtol=0)
    assert fourier_filter(x.half(), 1, 0.5).dtype == torch.float16


def test_freeu_patches_a_clone_and_only_matching_widths():
    model = tiny_model()
    m = FreeU(model, b1=1.5, b2=2.0, s1=0.5, s2=0.0)
    assert "patches" not in model.model_options["transformer_options"]  # the input is unchanged
    (patch,) = m.model_options["transformer_options"]["patches"]["output_block_patch"]
    h, hsp = torch.ones(1, 64, 4, 4), torch.full((1, 64, 4, 4), 5.0)  # 64 = 2 x model_channels: b2, s2
    h2, hsp2 = patch(h, hsp, {})
    assert h2[:, :32].eq(2.0).all() and h2[:, 32:].eq(1.0).all() and h.eq(1.0).all()  # h itself untouched
    torch.testing.assert_close(hsp2, torch.zeros_like(hsp), atol=1e-6, rtol=0)  # s2 = 0 removes DC
    h32 = torch.ones(1, 32, 4, 4)
    assert patch(h32, hsp, {})[0] is h32  # model_channels wide: not patched
    h128 = torch.ones(1, 128, 2, 2)  # 4 x model_channels: b1
    assert patch(h128, torch.ones(1, 128, 2, 2), {})[0][:, :64].eq(1.5).all()


def test_freeu_v2_weights_the_backbone_factor_by_mean_activation():
    m = FreeU_V2(tiny_model(), b1=1.3, b2=3.0, s1=0.9, s2=1.0)
    (patch,) = m.model_options["transformer_options"]["patches"]["output_block_patch"]
    h = torch.zeros(1, 64, 1, 3)
    h[..., 1], h[..., 2] = 1.0, 2.0  # mean per pixel 0, 1, 2 -> weights 0, 0.5, 1
    out, _ = patch(h, torch.ones(1, 64, 1, 3), {})
    assert out[0, :32, 0].unique(dim=0).tolist() == [[0.0, 2.0, 6.0]]  # x (1, 2, 3)
    assert torch.equal(out[:, 32:], h[:, 32:])


def cfg_args(seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    x, cond, uncond = (torch.randn(2, 4, 3, 3, generator=g) for _ in range(3))
    return x, cond, uncond, torch.tensor([2.0, 0.7]), scale


def test_rescale_cfg_multiplier_0_is_plain_cfg_and_1_keeps_the_positive_std():
    x, cond, uncond, sigma, scale = cfg_args()
    plain = cfg_function(None, cond, uncond, scale, x, sigma, {})
    zero = cfg_function(None, cond, uncond, scale, x, sigma, {"sampler_cfg_function": rescale_cfg(0.0)})
    torch.testing.assert_close(zero, plain, atol=1e-5, rtol=1e-5)
    one = cfg_function(None, cond, uncond, scale, x, sigma, {"sampler_cfg_function": rescale_cfg(1.0)})
    s = sigma.view(2, 1, 1, 1)
    # in v space (v = (x / (s^2 + 1) - denoised) * sqrt(s^2 + 1) / s) the result has cond's std
    v = lambda d: (x / (s ** 2 + 1) - d) * (s ** 2 + 1) ** 0.5 / s  # noqa: E731
    torch.testing.assert_close(v(one).std(dim=(1, 2, 3)), v(cond).std(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)
    m = RescaleCFG(tiny_model(), multiplier=0.7)
    assert callable(m.model_options["sampler_cfg_function"])


def test_cfg_zero_star_scale_and_update():
    n = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    assert zero_star_scale(2.0 * n, n).flatten().tolist() == pytest.approx([2.0, 2.0], rel=1e-6)
    x, cond, uncond, sigma, scale = cfg_args()
    # x - uncond parallel to x - cond with alpha 1: the guided result stays as it was
    x = uncond + (uncond - cond)  # x - cond = 2 (x - uncond) -> alpha 2
    denoised = torch.randn(2, 4, 3, 3)
    out = cfg_zero_star({"input": x, "cond_denoised": cond, "uncond_denoised": uncond, "denoised": denoised,
                         "cond_scale": scale})
    torch.testing.assert_close(out, denoised + uncond * 1.0 + scale * uncond * -1.0, atol=1e-5, rtol=1e-5)
    assert CFGZeroStar(tiny_model()).model_options["sampler_post_cfg_function"] == [cfg_zero_star]


def test_apg_formula_norm_clip_and_momentum():
    x, cond, uncond, sigma, scale = cfg_args()
    g = cond - uncond
    plain = apg_function(1.0, 0.0, 0.0)({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": sigma})
    torch.testing.assert_close(plain[0], uncond + g + g / scale)
    assert plain[1] is uncond
    # eta 0 keeps only the part of the guidance orthogonal to cond
    ortho = apg_function(0.0, 0.0, 0.0)({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": sigma})[0]
    part = ortho - uncond - g / scale
    assert (part * cond).sum(dim=(1, 2, 3)).abs().max() < 1e-5
    # the norm clip: guidance longer than the threshold is scaled down to it
    clipped = apg_function(1.0, 0.5, 0.0)({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": sigma})[0]
    assert (clipped - uncond - g / scale).flatten(1).norm(dim=1).tolist() == pytest.approx([0.5, 0.5], rel=1e-5)
    # momentum 0.5: second step uses 0.5 * g1 + g2; a rising sigma restarts the average
    fn = apg_function(1.0, 0.0, 0.5)
    fn({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": torch.tensor([3.0])})
    second = fn({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": torch.tensor([2.0])})[0]
    torch.testing.assert_close(second, uncond + 1.5 * g + g / scale)
    again = fn({"conds_out": [cond, uncond], "cond_scale": scale, "sigma": torch.tensor([3.0])})[0]
    torch.testing.assert_close(again, uncond + g + g / scale)
    assert len(APG(tiny_model(), eta=1.0, norm_threshold=5.0, momentum=0.0)
               .model_options["sampler_pre_cfg_function"]) == 1


def test_differential_diffusion_thresholds_the_mask_by_step():
    model = tiny_model()
    sigmas = torch.tensor([14.6146, 4.0, 1.0, 0.0])
    mask = torch.linspace(0, 1, 11).view(1, 1, 1, 11)
    ts = model.schedule.timestep
    opts = {"model": model, "sigmas": sigmas}
    # first step: threshold 1, only the mask's 1 regenerates; last sigma 0 -> measured to sigma_min
    assert differential_mask(sigmas[:1], mask, opts).flatten().tolist() == [0.0] * 10 + [1.0]
    want = (ts(torch.tensor(4.0)) - ts(model.schedule.sigma_min)) / (ts(sigmas[0]) - ts(model.schedule.sigma_min))
    mid = differential_mask(torch.tensor([4.0]), mask, opts)
    assert torch.equal(mid, (mask >= want).float()) and 0 < mid.sum() < 11
    half = differential_mask(torch.tensor([4.0]), mask, opts, strength=0.5)
    torch.testing.assert_close(half, 0.5 * mid + 0.5 * mask)
    assert torch.equal(differential_mask(torch.tensor([4.0]), mask, opts, strength=0.0), mid)  # ComfyUI's rule
    with pytest.raises(ValueError, match="DifferentialDiffusion: the sampler must pass the model"):
        differential_mask(torch.tensor([4.0]), mask, {"model": None, "sigmas": sigmas})
    m = DifferentialDiffusion(model, strength=0.5)
    fn = m.model_options["denoise_mask_function"]
    torch.testing.assert_close(fn(torch.tensor([4.0]), mask, extra_options=opts), half)


def test_lcm_schedule_is_the_distilled_table():
    full, lcm = DiscreteSchedule("eps"), LCMSchedule()
    assert len(lcm.sigmas) == 50 and torch.equal(lcm.sigmas, full.sigmas[19::20])
    assert lcm.timestep(lcm.sigma_max).item() == 999 and lcm.timestep(lcm.sigma_min).item() == 19
    assert lcm.timestep(full.sigmas[500]).item() == 499  # snaps to the nearest distilled step
    assert lcm.sigma(torch.tensor(999.0)).item() == pytest.approx(full.sigmas[999].item(), rel=1e-6)
    assert lcm.sigma(torch.tensor(29.0)).item() == pytest.approx(
        ((full.sigmas[19].log() + full.sigmas[39].log()) / 2).exp().item(), rel=1e-6)
    x, out = torch.full((1, 4, 2, 2), 2.0), torch.full((1, 4, 2, 2), 0.5)
    sigma = lcm.sigmas[0:1]  # timestep 19 -> scaled 190
    c_skip, c_out = 0.25 / (190.0 ** 2 + 0.25), 190.0 / (190.0 ** 2 + 0.25) ** 0.5
    want = c_out * (x - out * sigma) + c_skip * x
    torch.testing.assert_close(lcm.calculate_denoised(sigma, out, x), want)


def test_x0_and_img_to_img_predictions():
    x, out, sigma = torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), 0.5), torch.tensor([4.0])
    for prediction in ("x0", "img_to_img"):
        assert DiscreteSchedule(prediction).calculate_denoised(sigma, out, x) is out
    torch.testing.assert_close(DiscreteSchedule("x0").calculate_input(sigma, x), x / 17 ** 0.5)
    assert DiscreteSchedule("img_to_img").calculate_input(sigma, x) is x
