"""ControlNet files in other layouts: diffusers' ControlNetModel single files, read into the LDM
layout, and control-LoRAs, made over the sampled model's UNet. The diffusers names come from
ComfyUI 0.3.64's own map (its loader reads these files):
tests/fixtures/comfy_reference/controlnet_layouts/README.md."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.models.controlnet import (METADATA_KEY, ControlNet, ControlNetConfig, build_controlnet,
                                           controlnet_tensors, load_controlnet_file, split_layout)
from latentgraph.models.control_lora import ControlLora, make_control_lora
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
    with pytest.raises(CheckpointError,
                       match=r"(?s)m.safetensors: ControlNet tensors do not fit .*Missing.*middle_block_out"):
        build_controlnet(missing, None, "m.safetensors")


# -- control-LoRA ---------------------------------------------------------------------------
CONTROL_LORA = LAYOUTS / "tiny_sd15_control_lora.safetensors"


def _tiny_unet(family: str = "sd15", seed: int = 0):
    from latentgraph.models.unet import UNetModel

    torch.manual_seed(seed)
    return UNetModel(tiny_architecture(family).unet)


def test_control_lora_is_built_over_the_unet_from_three_sources():
    """Full tensors from the file, up/down pairs added to the UNet's weight, the rest (time
    embedding, norm weights) from the UNet; one ControlNet per UNet."""
    unet = _tiny_unet()
    tensors = make_control_lora(unet, rank=3, seed=2)
    lora = build_controlnet(dict(tensors), None, "cl.safetensors")
    assert isinstance(lora, ControlLora) and lora.hint_channels == 3
    net = lora.bind(unet)
    assert lora.bind(unet) is net and lora.bind(_tiny_unet(seed=1)) is not net
    sd, base = net.state_dict(), unet.state_dict()
    assert torch.equal(sd["zero_convs.1.0.weight"], tensors["zero_convs.1.0.weight"])
    assert torch.equal(sd["input_blocks.1.0.in_layers.2.bias"], tensors["input_blocks.1.0.in_layers.2.bias"])
    assert torch.equal(sd["time_embed.0.weight"], base["time_embed.0.weight"])
    assert torch.equal(sd["input_blocks.1.0.in_layers.0.weight"], base["input_blocks.1.0.in_layers.0.weight"])
    layer = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"  # Linear: up (32, 3), down (3, 32)
    assert tensors[layer + ".up"].shape == (32, 3) and tensors[layer + ".down"].shape == (3, 32)
    want = base[layer + ".weight"] + tensors[layer + ".up"] @ tensors[layer + ".down"]
    torch.testing.assert_close(sd[layer + ".weight"], want, rtol=0, atol=1e-7)
    conv = "input_blocks.3.0.in_layers.2"  # Conv2d (64, 32, 3, 3): up (64, 3, 1, 1), down (3, 32, 3, 3)
    assert tensors[conv + ".up"].shape == (64, 3, 1, 1) and tensors[conv + ".down"].shape == (3, 32, 3, 3)
    delta = (tensors[conv + ".up"].flatten(1) @ tensors[conv + ".down"].flatten(1)).reshape(64, 32, 3, 3)
    torch.testing.assert_close(sd[conv + ".weight"], base[conv + ".weight"] + delta, rtol=0, atol=1e-7)


def test_control_lora_samples_like_comfyui(executor):
    """ComfyUI's stock ControlNetLoader reads the tiny control-LoRA (it sizes nothing until
    sampling) and builds it over TinyCheckpointLoader's model: control_lora_ref.safetensors."""
    shutil.copy(CONTROL_LORA, executor.env.models_dir / "controlnet")
    wf = _graph()
    wf.add("cl", "ControlNetLoader", control_net_name=CONTROL_LORA.name)
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="cl", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    ref = load_file(LAYOUTS / "control_lora_ref.safetensors")["adv"]
    assert float((ref - ORACLE["plain"]).abs().max()) > 1.0  # the control-LoRA changes the picture
    _close(_sample(executor, wf, "adv.positive", "adv.negative"), ref)


def test_control_lora_errors_name_the_file_and_tensors():
    unet = _tiny_unet()
    tensors = make_control_lora(unet, rank=2, seed=0)
    with pytest.raises(CheckpointError, match=r"a.safetensors: a control-LoRA \(it has 'lora_controlnet'\) without "
                                              r"input_hint_block.0.weight"):
        build_controlnet({k: v for k, v in tensors.items() if not k.startswith("input_hint_block.0.")}, None,
                         "a.safetensors")
    with pytest.raises(CheckpointError, match=r"b.safetensors: control-LoRA tensors that are no layer's weight, "
                                              r"bias, up or down: x.alpha"):
        build_controlnet({**tensors, "x.alpha": torch.zeros(1)}, None, "b.safetensors")
    extra = build_controlnet({**tensors, "output_blocks.0.0.skip_connection.bias": torch.zeros(4)}, None, "c.st")
    with pytest.raises(CheckpointError, match=r"c.st: control-LoRA tensors with no place in a ControlNet for this "
                                              r"model \(unknown, model_channels 32\): output_blocks.0.0.skip"):
        extra.bind(unet)
    with pytest.raises(CheckpointError, match=r"d.st: input_hint_block.14.weight is \(32, 256, 3, 3\) here but "
                                              r"\(64, 256, 3, 3\) in a ControlNet for this model"):
        wide = dataclasses.replace(tiny_architecture("sd15").unet, model_channels=64)
        from latentgraph.models.unet import UNetModel
        build_controlnet(dict(tensors), None, "d.st").bind(UNetModel(wide))
    stray = {k: v for k, v in tensors.items() if k != "input_blocks.1.0.in_layers.2.up"}
    with pytest.raises(CheckpointError, match=r"e.st: input_blocks.1.0.in_layers.2.down has no .up"):
        build_controlnet(stray, None, "e.st").bind(unet)
    nothing = {k: v for k, v in tensors.items() if not k.startswith("zero_convs.2.")}
    with pytest.raises(CheckpointError, match=r"f.st: the control-LoRA and the model's UNet together lack 2 ControlNet "
                                              r"tensor\(s\) \(e.g. zero_convs.2.0.weight, zero_convs.2.0.bias\)"):
        build_controlnet(nothing, None, "f.st").bind(unet)


def test_sdxl_control_lora_takes_the_vector_conditioning():
    """Over an SDXL UNet the network gets label_emb (its weights + up@down) and reads y."""
    unet = _tiny_unet("sdxl")
    tensors = make_control_lora(unet, rank=2, seed=4)
    net = build_controlnet(dict(tensors), None, "xl.safetensors").bind(unet)
    assert net.config.unet.adm_in_channels == 1552 and net.config.unet.use_linear_in_transformer
    key = "label_emb.0.0"
    want = unet.state_dict()[key + ".weight"] + tensors[key + ".up"] @ tensors[key + ".down"]
    torch.testing.assert_close(net.state_dict()[key + ".weight"], want, rtol=0, atol=1e-7)
    x, hint, t, ctx = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64), torch.tensor([400.0]), torch.randn(1, 3, 32)
    y = torch.randn(1, 1552)
    out = net(x, hint, t, ctx, y)
    assert [tuple(r.shape) for r in out["output"]] == [(1, 32, 8, 8), (1, 32, 8, 8), (1, 32, 4, 4), (1, 64, 4, 4)]
    other = net(x, hint, t, ctx, torch.randn(1, 1552))
    assert float((other["middle"][0] - out["middle"][0]).abs().max()) > 1e-4  # y reaches the residuals


def test_make_checkpoint_writes_a_control_lora(tmp_path, capsys):
    """The CLI's control-LoRA is the one the parity fixture was made with (same seed and rank):
    only the UNet's shapes matter, so it is built on the meta device, tensor for tensor equal."""
    from latentgraph.cli import main

    out = tmp_path / "cl.safetensors"
    assert main(["make-checkpoint", "--kind", "control_lora", "--family", "sd15", "--seed", "11", str(out)]) == 0
    assert "sd15 control-LoRA (rank 4, tiny, fp32)" in capsys.readouterr().out
    made, fixture = load_file(out), load_file(CONTROL_LORA)
    assert sorted(made) == sorted(fixture) and len(made) == 182
    assert all(torch.equal(made[k], fixture[k]) for k in made)
    assert main(["make-checkpoint", "--kind", "control_lora", "--family", "sd15", "--rank", "0",
                 str(tmp_path / "bad.safetensors")]) == 1
    assert "a control-LoRA's rank must be 1 to 1024, not 0" in capsys.readouterr().err
    assert main(["make-checkpoint", "--kind", "controlnet", "--family", "sd15", "--rank", "2",
                 str(tmp_path / "bad.safetensors")]) == 1
    assert "--rank is for --kind control_lora" in capsys.readouterr().err
    assert not (tmp_path / "bad.safetensors").exists()
