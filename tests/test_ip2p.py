"""InstructPix2Pix: 8-channel UNets (SD1.x and SDXL) load, InstructPixToPixConditioning puts the
image to edit into the conditioning, and sampling concatenates its latent to the noisy one as
ComfyUI 0.3.64 does (references: tests/fixtures/comfy_reference/derivatives/)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentgraph.models.checkpoint import CheckpointError, load_checkpoint, original_layout, save_checkpoint
from latentgraph.models.families import METADATA_KEY, tiny_architecture
from latentgraph.models.make import make_checkpoint, random_networks
from latentgraph.nodes.ip2p import ip2p_concat, resize_to_batch
from derivatives_fixtures import LATENTS, assert_matches_comfyui, latentgraph_prompt, make_executor, run_key


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    return make_executor(tmp_path_factory.mktemp("ip2p"), ["lgM_ip2p_sd15.safetensors", "lgM_ip2p_sdxl.safetensors"])


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_node_gives_an_empty_latent_of_the_cropped_image(executor, family):
    """68 x 60 pixels are cropped to 64 x 56: an 8 x 7 latent of zeros, as ComfyUI's."""
    key = f"ip2p_{family}_c"
    out = executor.run(latentgraph_prompt(), targets=[key, f"ip2p_{family}_pos"])
    latent = out.get(key, 2)["samples"]
    assert torch.equal(latent, LATENTS[f"ip2p_{family}_latent"]) and latent.shape == (1, 4, 7, 8)
    positive, negative = out.get(key, 0), out.get(key, 1)
    image = positive[0][1]["concat_latent_image"]
    assert image.shape == (1, 4, 7, 8) and image.abs().max() > 0
    assert negative[0][1]["concat_latent_image"] is image
    assert "concat_latent_image" not in out.get(f"ip2p_{family}_pos", 0)[0][1]  # the input is not changed


@pytest.mark.parametrize("key", ["ip2p_sd15_euler", "ip2p_sdxl_euler", "ip2p_sd15_noimage", "ip2p_dual"])
def test_instructpix2pix_samples_as_comfyui(executor, key):
    """With the image (SD1, SDXL), without it (zeros), and with DualCFGGuider's 3-way guidance."""
    assert_matches_comfyui(run_key(executor, key), key)


def test_eight_channel_unets_load_for_sd1_and_sdxl_only(tmp_path):
    for family in ("sd15", "sdxl"):
        path = tmp_path / f"{family}.safetensors"
        make_checkpoint(path, family, "tiny", 3, variant="ip2p")
        ck = load_checkpoint(path)
        assert ck.arch.unet.in_channels == 8 and ck.unet.input_blocks[0][0].weight.shape[1] == 8
    arch = tiny_architecture("sd2")
    arch.unet = dataclasses.replace(arch.unet, in_channels=8)
    path = tmp_path / "sd2.safetensors"
    with torch.no_grad():
        save_checkpoint(original_layout(arch, *random_networks(arch)), path, {METADATA_KEY: arch.to_json()})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"{path}: does not have the layout of Stable Diffusion 2.x: 8 input channels (InstructPix2Pix) on a UNet of "
        f"neither SD1.x nor SDXL. latentgraph loads only the layouts it samples correctly, so the file is refused")


def test_batches_are_fitted_by_comfyuis_rule():
    t = torch.arange(5.0).view(5, 1)
    assert resize_to_batch(t, 5) is t
    assert resize_to_batch(t, 3).flatten().tolist() == [0.0, 2.0, 4.0]  # fewer: evenly spread, ends kept
    assert resize_to_batch(t[:2], 3).flatten().tolist() == [0.0, 1.0, 1.0]  # more: nearest of even positions
    assert resize_to_batch(t[:2], 5).flatten().tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert resize_to_batch(t, 1).flatten().tolist() == [0.0]


class _Arch:
    def __init__(self, family, sigma_range=None, prediction="eps"):
        self.family, self.sigma_range, self.prediction = family, sigma_range, prediction


class _Model:
    def __init__(self, **arch):
        self.arch = _Arch(**arch)


def test_the_concat_is_unscaled_resized_or_zeros():
    image = torch.randn(1, 4, 7, 8)
    cpu = torch.device("cpu")
    assert torch.equal(ip2p_concat(_Model(family="sd15"), image, torch.Size((2, 4, 7, 8)), cpu),
                       image.repeat(2, 1, 1, 1))
    assert torch.equal(ip2p_concat(_Model(family="sd15"), None, torch.Size((1, 4, 6, 6)), cpu), torch.zeros(1, 4, 6, 6))
    assert ip2p_concat(_Model(family="sdxl"), image, torch.Size((1, 4, 14, 16)), cpu).shape == (1, 4, 14, 16)
    # CosXL-edit (SDXL, continuous v-prediction sigmas) reads the image in SDXL's scaled space
    cosxl = _Model(family="sdxl", sigma_range=(0.002, 120.0), prediction="v")
    assert torch.equal(ip2p_concat(cosxl, image, torch.Size((1, 4, 7, 8)), cpu), image * 0.13025)
