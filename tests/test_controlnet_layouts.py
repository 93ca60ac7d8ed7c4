"""ControlNet files in other layouts: diffusers' ControlNetModel single files, read into the LDM
layout. The diffusers names come from ComfyUI 0.3.64's own map (its loader reads these files):
tests/fixtures/comfy_reference/controlnet_layouts/README.md."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import save_file

from latentgraph.models.controlnet import (METADATA_KEY, ControlNet, ControlNetConfig, build_controlnet,
                                           controlnet_tensors, load_controlnet_file, split_layout)
from latentgraph.models.controlnet_convert import diffusers_to_ldm
from latentgraph.models.errors import CheckpointError
from latentgraph.models.families import tiny_architecture
from test_controlnet import CN, ORACLE, _close, _graph, _sample, executor  # noqa: F401 (a fixture)
from conftest import FIXTURES

LAYOUTS = FIXTURES / "comfy_reference" / "controlnet_layouts"
NAMES = json.loads((LAYOUTS / "diffusers_names.json").read_text())  # family -> {diffusers name: LDM name}


def _config(case: str) -> ControlNetConfig:
    if case != "sdxl_levels":
        return ControlNetConfig(tiny_architecture(case).unet, 3, case)
    # SDXL's shape in small: no attention on the first level, 2 ResBlocks and 2 transformer layers per level
    u = dataclasses.replace(tiny_architecture("sdxl").unet, channel_mult=(1, 2, 2), num_res_blocks=(2, 2, 2),
                            transformer_depth=(0, 2, 2), transformer_depth_middle=2,
                            transformer_depth_output=(0, 0, 0, 2, 2, 2, 2, 2, 2))
    return ControlNetConfig(u, 3, "sdxl")


def _as_diffusers(net: ControlNet, case: str) -> dict[str, torch.Tensor]:
    sd = net.state_dict()
    return {d: sd[ldm].clone() for d, ldm in NAMES[case].items()}


@pytest.mark.parametrize("case,count", [("sd15", 154), ("sd2", 154), ("sdxl", 158), ("sdxl_levels", 362)])
def test_diffusers_names_convert_to_ours_and_give_the_same_residuals(case, count):
    torch.manual_seed(5)
    config = _config(case)
    net = ControlNet(config)
    names = NAMES[case]
    # ComfyUI's map covers every tensor of ours exactly once
    assert len(names) == count and sorted(names.values()) == sorted(net.state_dict())
    diffusers = _as_diffusers(net, case)
    converted = diffusers_to_ldm(diffusers, "d.safetensors")
    assert {k: id(v) for k, v in converted.items()} == {ldm: id(diffusers[d]) for d, ldm in names.items()}
    # the bare diffusers file carries no head layout: give ours where the family convention differs (tiny widths)
    meta = {METADATA_KEY: config.to_json()}
    loaded = build_controlnet(diffusers, meta, "d.safetensors")
    x, hint, t = torch.randn(2, 4, 8, 8), torch.rand(2, 3, 64, 64), torch.tensor([700.0, 20.0])
    ctx = torch.randn(2, 3, config.unet.context_dim)
    y = torch.randn(2, config.unet.adm_in_channels) if config.unet.adm_in_channels else None
    want, got = net(x, hint, t, ctx, y), loaded(x, hint, t, ctx, y)
    u = config.unet  # one residual per input block: conv_in, every ResBlock, every downsample
    assert len(got["output"]) == len(want["output"]) == 1 + sum(u.num_res_blocks) + len(u.channel_mult) - 1
    assert all(torch.equal(a, b) for a, b in zip(got["output"] + got["middle"], want["output"] + want["middle"]))


def test_sd15_diffusers_file_reads_its_config_from_the_keys(tmp_path):
    """No metadata: the SD1 head convention (8 heads) fits the tiny SD1 ControlNet."""
    torch.manual_seed(6)
    net = ControlNet(_config("sd15"))
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(_as_diffusers(net, "sd15"), path)
    loaded = load_controlnet_file(path)
    assert (loaded.config.unet, loaded.config.hint_channels) == (net.config.unet, 3)
    assert loaded.config.family == "unknown"  # context width 32 is no published family's
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())


def test_diffusers_file_samples_like_comfyui(executor):
    """The committed LDM fixture written under diffusers names samples to ComfyUI's `adv` latent."""
    ldm = load_controlnet_file(CN / "tiny_sd15_controlnet.safetensors")
    models = executor.env.models_dir / "controlnet"
    save_file(_as_diffusers(ldm, "sd15"), models / "tiny_sd15_controlnet_diffusers.safetensors")
    wf = _graph()
    wf.add("cnd", "ControlNetLoader", control_net_name="tiny_sd15_controlnet_diffusers.safetensors")
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="cnd", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    _close(_sample(executor, wf, "adv.positive", "adv.negative"), ORACLE["adv"])


def test_diffusers_tensors_without_a_place_are_named():
    torch.manual_seed(0)
    diffusers = _as_diffusers(ControlNet(_config("sd15")), "sd15")
    extra = {**diffusers, "control_add_embedding.linear_1.weight": torch.zeros(1)}  # a union ControlNet's
    with pytest.raises(CheckpointError, match=r"u.safetensors: diffusers-format ControlNet with 1 tensor\(s\) this "
                                              r"loader cannot place \(e.g. control_add_embedding.linear_1.weight\)"):
        split_layout(extra, "u.safetensors")
    odd = {**diffusers, "down_blocks.0.resnets.0.dropout.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"down_blocks.0.resnets.0.dropout.weight"):
        split_layout(odd, "o.safetensors")
    gap = {k.replace("down_blocks.1.", "down_blocks.2."): v for k, v in diffusers.items()}
    with pytest.raises(CheckpointError, match=r"g.safetensors: diffusers-format ControlNet not understood: "
                                              r"down_blocks levels \[0, 2\] are not 0..n-1"):
        split_layout(gap, "g.safetensors")
    missing = {k: v for k, v in diffusers.items() if not k.startswith("controlnet_mid_block.")}
    with pytest.raises(CheckpointError, match=r"(?s)m.safetensors: ControlNet tensors do not fit .*Missing.*middle_block_out"):
        build_controlnet(missing, None, "m.safetensors")
