"""SDXL derivatives with fewer UNet blocks: SSD-1B, Segmind Vega, KOALA-700M and KOALA-1B.
Their layout is read from the keys (a middle block that is a lone ResBlock or absent, one
ResBlock per level, output blocks of different depths); full-size key layouts on the meta
device give ComfyUI's detected config numbers, and tiny files of each layout sample as ComfyUI
0.3.64 does (tests/fixtures/comfy_reference/derivatives/)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from latentgraph.cli import main as cli_main
from latentgraph.models.checkpoint import (CheckpointError, build_text_encoders, detect_architecture, load_checkpoint,
                                           original_layout)
from latentgraph.models.families import full_architecture
from latentgraph.models.lora import diffusers_unet_names
from latentgraph.models.make import make_checkpoint
from latentgraph.models.unet import UNetConfig, UNetModel
from latentgraph.models.vae import AutoencoderKL
from latentgraph.models.variants import variant_architecture
from derivatives_fixtures import assert_matches_comfyui, make_executor, run_key

# ComfyUI 0.3.64's numbers (comfy/model_detection.py unet_config_from_diffusers_unet and
# supported_models.py): transformer depth per input ResBlock, per output block (the list ends
# with output_blocks.0), the middle (-1: a lone ResBlock, -2: none), ResBlocks per level
COMFY = {
    "sdxl": ([0, 0, 2, 2, 10, 10], [0, 0, 0, 2, 2, 2, 10, 10, 10], 10, [2, 2, 2]),
    "ssd1b": ([0, 0, 2, 2, 4, 4], [0, 0, 0, 1, 1, 2, 10, 4, 4], -1, [2, 2, 2]),
    "vega": ([0, 0, 1, 1, 2, 2], [0, 0, 0, 1, 1, 1, 2, 2, 2], -1, [2, 2, 2]),
    "koala_700m": ([0, 2, 5], [0, 0, 2, 2, 5, 5], -2, [1, 1, 1]),
    "koala_1b": ([0, 2, 6], [0, 0, 2, 2, 6, 6], 6, [1, 1, 1]),
}
TINY_OVERRIDES = {"unet_num_head_channels": 16, "text_num_heads": 2}


def per_input_block(cfg: UNetConfig) -> list[int]:
    return [depth for depth, n in zip(cfg.transformer_depth, cfg.num_res_blocks) for _ in range(n)]


def full_size_keys(variant: str) -> dict:
    arch = full_architecture("sdxl") if variant == "sdxl" else variant_architecture("sdxl", variant, "full")
    with torch.device("meta"):
        return original_layout(arch, UNetModel(arch.unet), AutoencoderKL(arch.vae), build_text_encoders(arch))


@pytest.mark.parametrize("variant", sorted(COMFY))
def test_full_size_layouts_read_from_keys_give_comfyuis_config(variant):
    sd = full_size_keys(variant)
    arch = detect_architecture(sd, None, f"{variant}.safetensors")  # keys only: no metadata
    depth, depth_out, middle, res_blocks = COMFY[variant]
    cfg = arch.unet
    assert arch.family == "sdxl" and arch.prediction == "eps"
    assert per_input_block(cfg) == depth
    assert list(cfg.transformer_depth_output) == depth_out
    assert cfg.transformer_depth_middle == middle
    assert list(cfg.num_res_blocks) == res_blocks
    assert (cfg.model_channels, cfg.channel_mult, cfg.context_dim, cfg.adm_in_channels) == (320, (1, 2, 4), 2048, 2816)
    assert (cfg.num_heads, cfg.num_head_channels, cfg.use_linear_in_transformer) == (-1, 64, True)
    # the middle block's keys are what the number says
    assert ("model.diffusion_model.middle_block.0.in_layers.0.weight" in sd) == (middle >= -1)
    assert ("model.diffusion_model.middle_block.1.proj_in.weight" in sd) == (middle >= 0)
    blocks = {k.split(".")[3] for k in sd if k.startswith("model.diffusion_model.output_blocks.")}
    assert len(blocks) == len(depth_out)


def test_full_size_parameter_counts_are_the_published_ones():
    """UNet sizes as their authors give them: SDXL 2.6 B, SSD-1B 1.3 B, Segmind Vega 745 M,
    KOALA-700M 782 M and KOALA-1B 1,161 M (the KOALA paper's table 2)."""
    counts = {v: sum(t.numel() for k, t in full_size_keys(v).items() if k.startswith("model.diffusion_model."))
              for v in COMFY}
    assert counts == {"sdxl": 2_567_463_684, "ssd1b": 1_331_334_404, "vega": 745_225_604,
                      "koala_700m": 782_822_724, "koala_1b": 1_161_184_324}


@pytest.mark.parametrize("variant", ["ssd1b", "vega", "koala_700m", "koala_1b"])
def test_tiny_files_load_from_keys_as_made(tmp_path, variant):
    path = tmp_path / f"{variant}.safetensors"
    made = make_checkpoint(path, "sdxl", "tiny", seed=1, variant=variant, write_metadata=False)
    ck = load_checkpoint(path, overrides=TINY_OVERRIDES)
    assert ck.arch.unet == made.unet
    middle = made.unet.transformer_depth_middle
    assert (ck.unet.middle_block is None) == (middle == -2)
    if middle == -1:
        assert len(ck.unet.middle_block) == 1
    out = ck.unet(torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 5, 32), torch.randn(1, 1552))
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_middle_blocks_that_fit_no_layout_are_refused(tmp_path):
    arch = variant_architecture("sdxl", "ssd1b", "tiny")
    with torch.no_grad():
        sd = original_layout(arch, UNetModel(arch.unet), AutoencoderKL(arch.vae), build_text_encoders(arch))
    sd["model.diffusion_model.middle_block.1.in_layers.0.weight"] = torch.zeros(128)  # a second ResBlock
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, overrides=TINY_OVERRIDES)
    assert str(info.value) == (
        f"{path}: the UNet's layout is not one latentgraph knows (middle_block.1 is not a transformer (no "
        f"middle_block.1.proj_in.weight); the middle block must be ResBlock-transformer-ResBlock, a lone ResBlock, "
        f"or absent)")
    with pytest.raises(ValueError) as info:
        dataclasses.replace(UNetConfig.sdxl(), transformer_depth_middle=-3)
    assert str(info.value) == ("transformer_depth_middle must be >= -2 (-1: a lone ResBlock, -2: no middle block), "
                               "got -3")


def test_make_checkpoint_variants_and_their_errors(tmp_path, capsys):
    out = tmp_path / "k.safetensors"
    assert cli_main(["make-checkpoint", str(out), "--family", "sdxl", "--variant", "koala_700m"]) == 0
    assert "Stable Diffusion XL (tiny, eps-prediction, fp32)" in capsys.readouterr().out
    assert load_checkpoint(out).arch.unet.transformer_depth_middle == -2
    assert cli_main(["make-checkpoint", str(out), "--family", "sd15", "--variant", "ssd1b"]) == 1
    assert capsys.readouterr().err.strip() == "latentgraph make-checkpoint: the ssd1b variant is of sdxl, not sd15"
    assert cli_main(["make-checkpoint", str(out), "--family", "sdxl", "--variant", "xl"]) == 1
    assert capsys.readouterr().err.strip() == (
        "latentgraph make-checkpoint: unknown checkpoint variant 'xl'; known: ssd1b, vega, koala_700m, koala_1b, "
        "playground_v25, cosxl, ip2p")
    assert cli_main(["make-checkpoint", str(out), "--family", "sd21_unclip_l", "--variant", "ip2p"]) == 1
    assert capsys.readouterr().err.strip() == ("latentgraph make-checkpoint: --variant ip2p is not a variant of "
                                               "sd21_unclip_l")
    assert cli_main(["make-checkpoint", str(out), "--kind", "gligen", "--family", "sd15", "--variant", "ip2p"]) == 1
    assert capsys.readouterr().err.startswith("latentgraph make-checkpoint: --variant is for --kind checkpoint, ")


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    names = [f"lgM_{v}.safetensors" for v in ("ssd1b", "vega", "koala_700m", "koala_1b")]
    return make_executor(tmp_path_factory.mktemp("derivatives"), names)


@pytest.mark.parametrize("variant", ["ssd1b", "vega", "koala_700m", "koala_1b"])
def test_tiny_derivatives_sample_as_comfyui(executor, variant):
    assert_matches_comfyui(run_key(executor, f"{variant}_euler"), f"{variant}_euler")


def test_lora_names_follow_the_middle_block():
    """diffusers' names for LoRA keys: SSD-1B's lone middle ResBlock is mid_block.resnets.0 (no
    attentions); KOALA-700M has no mid_block at all."""
    names = {}
    for variant in ("ssd1b", "koala_700m"):
        arch = variant_architecture("sdxl", variant, "full")
        with torch.device("meta"):
            names[variant] = diffusers_unet_names(UNetModel(arch.unet))
    mid = {k: v for k, v in names["ssd1b"].items() if k.startswith("middle_block.")}
    assert mid["middle_block.0.in_layers.2"] == "mid_block.resnets.0.conv1"
    assert sorted(v.rsplit(".", 1)[1] for v in mid.values()) == ["conv1", "conv2", "norm1", "norm2", "time_emb_proj"]
    assert not [v for v in names["koala_700m"].values() if v.startswith("mid_block")]
    assert names["koala_700m"]["output_blocks.3.1.proj_in"] == "up_blocks.1.attentions.1.proj_in"
