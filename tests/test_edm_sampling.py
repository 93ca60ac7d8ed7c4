"""Continuous EDM / V model sampling: ModelSamplingContinuousEDM and ModelSamplingContinuousV,
and the SDXL files that need it detected from their keys as ComfyUI does (Playground v2.5:
``edm_mean``/``edm_std``, EDM preconditioning and its own latent mean and std; CosXL:
``edm_vpred.sigma_max``/``sigma_min``, v-prediction over continuous sigmas). The numbers are
ComfyUI 0.3.64's (comfy/model_sampling.py, comfy/latent_formats.py) and the sampled latents its
runs of tests/fixtures/comfy_reference/derivatives/prompt.json."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import NodeExecutionError
from latentgraph.models.checkpoint import (CheckpointError, build_text_encoders, detect_architecture, load_checkpoint,
                                           original_layout)
from latentgraph.models.families import Architecture, full_architecture
from latentgraph.models.unet import UNetModel
from latentgraph.models.vae import AutoencoderKL
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes.model_sampling import ModelSamplingContinuousEDM, ModelSamplingContinuousV
from latentgraph.nodes.preview import latent2rgb
from latentgraph.nodes.sampling import ModelSamplingDiscrete
from latentgraph.nodes.sd import SDModel, schedule_for
from latentgraph.sampling.schedule import PLAYGROUND_V25, ContinuousSchedule, DiscreteSchedule
from derivatives_fixtures import assert_matches_comfyui, latentgraph_prompt, make_executor, run_key

TINY = {"unet_num_head_channels": 16, "text_num_heads": 2}  # what a tiny file without metadata cannot show
# ComfyUI's values: sigmas[0, 1, 500, 999], timestep(2.5), sigma(0.3), percent_to_sigma(0.3)
COMFY_TABLES = {
    ("edm", 0.002, 80.0, 0.5, "edm"): ([0.001999999862164259, 0.0020213271491229534, 0.4021271765232086, 80.0],
                                       0.2290726900100708, 3.3201169967651367, 3.330212760754133),
    ("v", 0.002, 120.0, 1.0, "edm"): ([0.001999999862164259, 0.0020221476443111897, 0.492603063583374,
                                       120.00000762939453], 0.2290726900100708, 3.3201169967651367,
                                      4.42319291496207),
    ("v", 0.03, 500.0, 1.0, "v"): ([0.029999999329447746, 0.03029334731400013, 3.891871690750122, 500.00006103515625],
                                   0.7577621340751648, 0.5095254778862, 27.065460060038514),
}


@pytest.mark.parametrize("params", sorted(COMFY_TABLES))
def test_sigma_tables_and_timesteps_are_comfyuis(params):
    table, t, sigma, percent = COMFY_TABLES[params]
    s = ContinuousSchedule(*params)
    # float32 values: their last bits depend on the torch build and the CPU (1 part in 10^6)
    assert [float(s.sigmas[i]) for i in (0, 1, 500, 999)] == pytest.approx(table, rel=1e-6)
    assert float(s.timestep(torch.tensor(2.5))) == pytest.approx(t, rel=1e-6)
    assert float(s.sigma(torch.tensor(0.3))) == pytest.approx(sigma, rel=1e-6)
    assert s.percent_to_sigma(0.3) == pytest.approx(percent, rel=1e-6)
    assert (s.percent_to_sigma(0.0), s.percent_to_sigma(1.0)) == (999999999.9, 0.0)
    assert float(s.sigma(s.timestep(torch.tensor(7.0)))) == pytest.approx(7.0, rel=1e-6)


def test_preconditioning_is_comfyuis():
    """c_in, c_skip and c_out at sigma 3 on a 2-channel input: EDM (sigma_data 0.5) and v (1.0)."""
    x, out, sigma = torch.tensor([[[[1.5]], [[-0.5]]]]), torch.tensor([[[[0.25]], [[2.0]]]]), torch.tensor([3.0])
    edm = ContinuousSchedule("edm", 0.002, 80.0, 0.5)
    v = ContinuousSchedule("v", 0.002, 120.0, 1.0)
    assert edm.calculate_input(sigma, x).flatten().tolist() == pytest.approx([0.49319693446159363, -0.16439898312091827], rel=1e-6)
    assert edm.calculate_denoised(sigma, out, x).flatten().tolist() == pytest.approx([0.16383977234363556, 0.9728803634643555], rel=1e-6)
    assert v.calculate_input(sigma, x).flatten().tolist() == pytest.approx([0.47434163093566895, -0.15811388194561005], rel=1e-6)
    assert v.calculate_denoised(sigma, out, x).flatten().tolist() == pytest.approx([-0.08717080950737, -1.94736647605896], rel=1e-6)
    eps = ContinuousSchedule("eps", 0.002, 80.0)
    assert eps.calculate_denoised(sigma, out, x).flatten().tolist() == pytest.approx([0.75, -6.5], rel=1e-6)


def test_playground_latent_format_is_comfyuis():
    z = torch.tensor([1.0, 2.0, -3.0, 0.5]).view(1, 4, 1, 1)
    assert PLAYGROUND_V25.process_in(z).flatten().tolist() == [0.1564520299434662, 0.009657412767410278,
                                                               -0.12343888729810715, -0.19269011914730072]
    assert PLAYGROUND_V25.process_out(z).flatten().tolist() == [15.327999114990234, 25.494800567626953,
                                                                -40.68179702758789, 7.7453999519348145]


def test_bad_parameters_are_refused_with_the_node_and_input():
    with pytest.raises(ValueError) as info:
        ContinuousSchedule("x0", 0.002, 80.0)
    assert str(info.value) == "unknown prediction type 'x0' for continuous sampling: expected eps, v or edm"
    model = object()  # refused before the model is looked at
    with pytest.raises(ValueError) as info:
        ModelSamplingContinuousEDM(model, "edm", sigma_max=80.0, sigma_min=0.0)
    assert str(info.value) == ("ModelSamplingContinuousEDM: sigma_min (0) must be above 0 and below sigma_max (80): "
                               "the sigmas are spaced evenly in log(sigma)")
    with pytest.raises(ValueError) as info:
        ModelSamplingContinuousV(model, "v_prediction", sigma_max=0.01, sigma_min=0.03)
    assert str(info.value) == ("ModelSamplingContinuousV: sigma_min (0.03) must be above 0 and below sigma_max "
                               "(0.01): the sigmas are spaced evenly in log(sigma)")
    with pytest.raises(ValueError) as info:
        ModelSamplingContinuousEDM(model, "cosmos_rflow", sigma_max=80.0, sigma_min=0.002)
    assert str(info.value).startswith("ModelSamplingContinuousEDM: sampling 'cosmos_rflow' is the rectified-flow "
                                      "sampling of NVIDIA's Cosmos video models, which latentgraph does not load")


# -- the files that need it, detected from their keys ------------------------------------------
def test_playground_and_cosxl_keys_choose_their_sampling(tmp_path):
    pg = tmp_path / "pg.safetensors"
    make_checkpoint(pg, "sdxl", "tiny", 2, variant="playground_v25", write_metadata=False)
    arch = load_checkpoint(pg, overrides=TINY).arch
    assert (arch.prediction, arch.sigma_range, arch.latent_format) == ("edm", (0.002, 80.0), "playground_v25")
    s = schedule_for(arch)
    assert (s.prediction, s.timing, s.sigma_data, float(s.sigma_max)) == ("edm", "edm", 0.5, 80.0)
    cos = tmp_path / "cosxl.safetensors"
    make_checkpoint(cos, "sdxl", "tiny", 2, variant="cosxl")
    sd = load_file(str(cos))
    assert sd["edm_vpred.sigma_max"].item() == 120.0 and "v_pred" not in sd
    sd["edm_vpred.sigma_max"] = torch.tensor(60.0)  # the value in the file is read
    del sd["edm_vpred.sigma_min"]  # and ComfyUI's default taken without it
    save_file(sd, str(cos))
    arch = load_checkpoint(cos, overrides=TINY).arch  # (save_file dropped the metadata)
    assert (arch.prediction, arch.sigma_range, arch.latent_format) == ("v", (0.002, 60.0), None)
    s = schedule_for(arch)
    assert (s.prediction, s.sigma_data) == ("v", 1.0) and float(s.sigma_max) == pytest.approx(60.0, rel=1e-6)
    # ModelSamplingDiscrete's choice still replaces it (and Playground's latent format stays, as in ComfyUI)
    assert isinstance(schedule_for(arch, "eps", False), DiscreteSchedule)


def test_broken_markers_are_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    make_checkpoint(path, "sdxl", "tiny", 2, variant="playground_v25")
    sd = load_file(str(path))
    del sd["edm_std"]
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: detected a SDXL model with edm_mean but not the set that chooses its sampling (edm_mean with "
        f"edm_std: Playground v2.5; edm_vpred.sigma_max: CosXL). latentgraph does not implement its sampling yet, and "
        f"loaded as a plain model it would give wrong pictures, so the file is refused")
    make_checkpoint(path, "sdxl", "tiny", 2, variant="cosxl")
    sd = load_file(str(path))
    sd["edm_vpred.sigma_min"] = torch.tensor(500.0)
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: edm_vpred.sigma_min = 500 is not below edm_vpred.sigma_max = 120"
    sd["edm_vpred.sigma_min"] = torch.tensor([0.002, 0.003])
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (f"{path}: edm_vpred.sigma_min must be a single number (CosXL's continuous-sigma "
                               f"bound), found shape (2,)")


def test_a_plain_scale_is_refused_for_playgrounds_latent_format(tmp_path):
    path = tmp_path / "pg.safetensors"
    make_checkpoint(path, "sdxl", "tiny", 2, variant="playground_v25")
    ck = load_checkpoint(path)
    model = SDModel(ck.unet, ck.arch, schedule_for(ck.arch), placement=None)
    assert model.latent_format is PLAYGROUND_V25
    with pytest.raises(ValueError) as info:
        model.latent_scale
    assert str(info.value) == ("this model's latent format (sdxl_playground_2_5) shifts each channel by its own mean "
                               "and std, not by one scale: the node does not support it")
    # our metadata carries the choice too, and reads back as it was written
    text = ck.arch.to_json()
    assert '"latent_format": "playground_v25"' in text and '"sigma_range": [0.002, 80.0]' in text
    assert Architecture.from_json(text) == ck.arch


# -- sampling as ComfyUI ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    names = ["lgM_playground.safetensors", "lgM_cosxl.safetensors", "lgM_sdxl.safetensors", "lgM_sd15.safetensors"]
    return make_executor(tmp_path_factory.mktemp("edm"), names)


@pytest.mark.parametrize("key", ["pg_euler", "pg_img2img", "cosxl_euler", "cosxl_simple"])
def test_playground_and_cosxl_files_sample_as_comfyui(executor, key):
    assert_matches_comfyui(run_key(executor, key), key)


@pytest.mark.parametrize("key", ["edm_v", "edm_edm", "edm_pg", "edm_eps", "cont_v", "cont_v_sgm", "edm_pg_img2img"])
def test_the_nodes_on_plain_models_sample_as_comfyui(executor, key):
    assert_matches_comfyui(run_key(executor, key), key)


def test_a_bad_sigma_through_the_executor_names_the_node(executor):
    prompt = latentgraph_prompt()
    prompt["edm_v_ms"]["inputs"]["sigma_min"] = 200.0
    with pytest.raises(NodeExecutionError) as info:
        executor.run(prompt, targets=["edm_v"])
    assert info.value.node_id == "edm_v_ms"
    assert "ModelSamplingContinuousEDM: sigma_min (200) must be above 0 and below sigma_max (120)" in str(info.value)


def test_playground_previews_use_its_own_factors():
    """ComfyUI's latent_rgb_factors of SDXL_Playground_2_5 (no bias), not SDXL's."""
    latent = torch.zeros(1, 4, 1, 1)
    latent[0, 0] = 1.0  # channel 0 alone: the first row of factors
    pixel = latent2rgb("sdxl_playground_2_5")(latent).getpixel((0, 0))
    assert pixel == tuple(int((v + 1) / 2 * 255) for v in (0.3920, 0.4054, 0.4549))
    assert latent2rgb("sdxl")(latent).getpixel((0, 0)) == tuple(
        int((v + b + 1) / 2 * 255) for v, b in zip((0.3651, 0.4232, 0.4341), (0.1084, -0.0175, -0.0011)))
    assert PLAYGROUND_V25.name == "sdxl_playground_2_5"


def test_full_size_playground_keys_and_model_sampling_discrete_on_it(tmp_path):
    """A full-size SDXL layout (meta tensors, no memory) with Playground's markers is detected as
    such; ModelSamplingDiscrete then replaces the sampling but, as in ComfyUI, not the latent format."""
    arch = full_architecture("sdxl")
    with torch.device("meta"):
        sd = original_layout(arch, UNetModel(arch.unet), AutoencoderKL(arch.vae), build_text_encoders(arch))
    sd.update(edm_mean=torch.zeros(1, 4, 1, 1), edm_std=torch.ones(1, 4, 1, 1))
    found = detect_architecture(sd, None, "playground-v2.5.safetensors")
    assert (found.family, found.prediction, found.sigma_range, found.latent_format) == (
        "sdxl", "edm", (0.002, 80.0), "playground_v25")
    path = tmp_path / "pg.safetensors"
    make_checkpoint(path, "sdxl", "tiny", 2, variant="playground_v25")
    ck = load_checkpoint(path)
    model = SDModel(ck.unet, ck.arch, schedule_for(ck.arch), placement=None)
    discrete = ModelSamplingDiscrete(model, "v_prediction", False)
    assert isinstance(discrete.schedule, DiscreteSchedule) and discrete.schedule.prediction == "v"
    assert discrete.latent_format is PLAYGROUND_V25 and model.schedule.prediction == "edm"
