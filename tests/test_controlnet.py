"""ControlNet: the network and its files (layouts, detection, errors), make-checkpoint --kind
controlnet, the loader and apply nodes, and whole sampling runs against ComfyUI 0.3.64's
latents on the tiny SD1 checkpoint (tests/fixtures/comfy_reference/controlnet/README.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.controlnet import (METADATA_KEY, Control, ControlNet, ControlNetConfig, broadcast_hint,
                                           build_controlnet, config_from_state_dict, controlnet_tensors,
                                           split_layout, upscale_center)
from latentgraph.models.errors import CheckpointError
from latentgraph.models.families import full_architecture, tiny_architecture
from latentgraph.models.make import make_controlnet
from latentgraph.models.unet import UNetModel
from latentgraph.nodes import controlnet as cn_nodes
from latentgraph.nodes import create_registry
from latentgraph.sampling.guidance import Cond, control_to_uncond
from test_sampling_parity import _with_metadata
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
CN = REF / "controlnet"
ORACLE = load_file(CN / "controlnet_ref.safetensors")


def tiny_config(family="sd15") -> ControlNetConfig:
    return ControlNetConfig(tiny_architecture(family).unet, 3, family)


# -- the network and its layouts ------------------------------------------------------------
def test_residuals_fit_the_unet_of_the_same_config():
    torch.manual_seed(0)
    config = tiny_config()
    net, unet = ControlNet(config), UNetModel(config.unet)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 10.0]), torch.randn(2, 5, 32)
    out = net(x, torch.rand(2, 3, 64, 64), t, ctx)
    assert len(out["output"]) == len(unet.input_blocks) == 4 and len(out["middle"]) == 1
    assert [tuple(r.shape) for r in out["output"]] == [(2, 32, 8, 8), (2, 32, 8, 8), (2, 32, 4, 4), (2, 64, 4, 4)]
    plain = unet(x, t, ctx)
    controlled = unet(x, t, ctx, control={"input": [], **out})
    assert (controlled - plain).abs().max() > 1e-3  # the residuals reach the output
    zero = {k: [torch.zeros_like(r) for r in v] for k, v in out.items()}
    torch.testing.assert_close(unet(x, t, ctx, control=zero), plain, rtol=0, atol=1e-6)


def test_sd15_layout_matches_the_published_files():
    """control_sd15_*.pth / control_v11p_sd15_*: 340 tensors, 361,279,120 parameters (meta device)."""
    with torch.device("meta"):
        net = ControlNet(ControlNetConfig(full_architecture("sd15").unet, 3, "sd15"))
    sd = net.state_dict()
    assert (len(sd), sum(v.numel() for v in sd.values())) == (340, 361_279_120)
    assert {"input_hint_block.14.weight", "zero_convs.11.0.weight", "middle_block_out.0.bias"} <= set(sd)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_encoder_half_is_the_unets_and_config_reads_back(family):
    """Every tensor of the UNet's encoder half is there with the UNet's name and shape (so the
    same code reads both), plus one zero conv per input block; the config reads back from keys."""
    arch = full_architecture(family).unet
    with torch.device("meta"):
        net, unet = ControlNet(ControlNetConfig(arch, 3, family)), UNetModel(arch)
    sd, usd = net.state_dict(), unet.state_dict()
    shared = {k: tuple(v.shape) for k, v in usd.items()
              if k.startswith(("time_embed.", "label_emb.", "input_blocks.", "middle_block."))}
    assert {k: tuple(sd[k].shape) for k in shared} == shared
    rest = set(sd) - set(shared)
    assert len([k for k in rest if k.startswith("zero_convs.")]) == 2 * len(unet.input_blocks)
    assert len(rest) == 2 * len(unet.input_blocks) + 2 + 16  # + middle_block_out, + 8 hint convs
    config = config_from_state_dict(sd, None, "x")
    assert config.family == family and config.unet.model_channels == 320
    assert (config.unet.channel_mult, config.unet.transformer_depth, config.unet.context_dim,
            config.unet.adm_in_channels) == (arch.channel_mult, arch.transformer_depth, arch.context_dim,
                                             arch.adm_in_channels)


def test_config_read_from_keys_without_metadata():
    torch.manual_seed(0)
    sd = ControlNet(tiny_config("sdxl")).state_dict()
    config = config_from_state_dict(sd, None, "x")
    arch = tiny_architecture("sdxl").unet
    assert (config.unet.channel_mult, config.unet.num_res_blocks, config.unet.transformer_depth) == \
        (arch.channel_mult, arch.num_res_blocks, arch.transformer_depth)
    assert config.unet.adm_in_channels == arch.adm_in_channels and config.unet.use_linear_in_transformer
    assert config.unet.num_head_channels == 64 and config.family == "unknown"  # context 32: no published family
    assert config.hint_channels == 3


def test_prefixed_bare_and_fp16_files_load_strictly(tmp_path):
    torch.manual_seed(3)
    net = ControlNet(tiny_config())
    meta = {METADATA_KEY: net.config.to_json()}
    x, hint, t, ctx = torch.randn(1, 4, 8, 8), torch.rand(1, 3, 64, 64), torch.tensor([300.0]), torch.randn(1, 3, 32)
    want = net(x, hint, t, ctx)
    for name, tensors in (("prefixed", controlnet_tensors(net)), ("bare", controlnet_tensors(net, prefix=""))):
        got = build_controlnet(tensors, meta, name)(x, hint, t, ctx)
        assert all(torch.equal(a, b) for a, b in zip(got["output"] + got["middle"], want["output"] + want["middle"]))
    half = {k: v.half() for k, v in controlnet_tensors(net).items()}
    loaded = build_controlnet(half, meta, "fp16", torch.float32)
    assert next(loaded.parameters()).dtype == torch.float32
    assert torch.equal(loaded.zero_convs[0][0].weight, net.zero_convs[0][0].weight.half().float())


def test_other_layouts_are_named():
    for key in ("controlnet_blocks.0.weight", "controlnet_blocks.0.linear.weight"):
        with pytest.raises(CheckpointError, match=r"f.safetensors: this is a transformer ControlNet \(controlnet_blocks"
                                                  r"\.\*: SD3/Flux/HunyuanDiT\), which is not supported yet"):
            split_layout({key: torch.zeros(1)}, "f.safetensors")
    with pytest.raises(CheckpointError, match=r"g.pt: not a ControlNet: .*first keys: a\.weight, b\.bias"):
        split_layout({"a.weight": torch.zeros(1), "b.bias": torch.zeros(1)}, "g.pt")


def test_misfit_tensors_and_diff_without_model_are_refused():
    torch.manual_seed(0)
    tensors = controlnet_tensors(ControlNet(tiny_config()))
    meta = {METADATA_KEY: tiny_config().to_json()}
    bad = dict(tensors)
    bad["control_model.zero_convs.0.0.weight"] = torch.zeros(5, 5, 1, 1)
    with pytest.raises(CheckpointError, match=r"x.safetensors: ControlNet tensors do not fit .*sd15, model_channels 32"):
        build_controlnet(bad, meta, "x.safetensors")
    with pytest.raises(CheckpointError, match="diff ControlNet .*DiffControlNetLoader"):
        build_controlnet({**tensors, "difference": torch.zeros(1)}, meta, "d.safetensors")


def test_diff_controlnet_adds_the_base_unet():
    torch.manual_seed(0)
    config = tiny_config()
    unet, net = UNetModel(config.unet), ControlNet(config)
    base = unet.state_dict()
    diff = {k: v - base[k[len("control_model."):]] if k[len("control_model."):] in base else v
            for k, v in controlnet_tensors(net).items()}
    loaded = build_controlnet({**diff, "difference": torch.zeros(0)}, {METADATA_KEY: config.to_json()}, "d", base_unet=unet)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=1e-6)


def test_make_controlnet_is_deterministic_and_loads(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    config = make_controlnet(a, "sd15", "tiny", seed=7)
    make_controlnet(b, "sd15", "tiny", seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() == (CN / "tiny_sd15_controlnet.safetensors").read_bytes()  # the committed fixture
    assert config.unet == tiny_architecture("sd15").unet
    with pytest.raises(ValueError, match="ControlNets are made for sd15, sd2 or sdxl, not 'sdxl_refiner'"):
        make_controlnet(tmp_path / "c.safetensors", "sdxl_refiner")
    make_controlnet(tmp_path / "x.safetensors", "sdxl", "tiny", seed=1, dtype="fp16", write_metadata=False)
    sd = load_file(tmp_path / "x.safetensors")
    assert sd["control_model.label_emb.0.0.weight"].dtype == torch.float16
    assert config_from_state_dict(split_layout(sd, "x"), None, "x").unet.adm_in_channels == 16 + 6 * 256


def test_make_checkpoint_cli_kind_controlnet(tmp_path, capsys):
    from latentgraph.cli import main

    out = tmp_path / "cn.safetensors"
    assert main(["make-checkpoint", "--kind", "controlnet", "--family", "sd2", str(out)]) == 0
    assert "sd2 ControlNet (tiny, fp32)" in capsys.readouterr().out
    with safe_open(str(out), "pt") as f:
        assert ControlNetConfig.from_json(f.metadata()[METADATA_KEY]).unet == tiny_architecture("sd2").unet


# -- hint and control pieces ----------------------------------------------------------------
def test_hint_is_centre_cropped_then_resized_nearest_exact():
    img = torch.arange(6 * 4, dtype=torch.float32).reshape(1, 1, 4, 6)  # wider than the square target
    out = upscale_center(img, 4, 4)
    assert out.shape == (1, 1, 4, 4)
    assert torch.equal(out, img[:, :, :, 1:5])  # one column cut each side, then same size
    assert torch.equal(upscale_center(torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]), 4, 4)[0, 0, 0],
                       torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_hint_batches_broadcast_like_comfyui():
    h = torch.arange(3.0).reshape(3, 1, 1, 1)
    assert broadcast_hint(h[:1], 4, 2).shape[0] == 1
    assert broadcast_hint(h, 4, 2).flatten().tolist() == [0, 1, 0, 1]  # 2 per prompt, cond+uncond
    assert broadcast_hint(h[:2], 6, 2).flatten().tolist() == [0, 1, 0, 0, 1, 0]


class _Schedule:
    def percent_to_sigma(self, p):
        return {0.0: 1e9, 1.0: 0.0}.get(p, 10.0 * (1 - p))

    def calculate_input(self, sigma, x):
        return x

    def timestep(self, sigma):
        return sigma


class _Model:
    schedule = _Schedule()


def _fake_net(value: float):
    net = ControlNet(tiny_config())
    net.forward = lambda x, hint, t, ctx, y=None: {"output": [torch.full((1,), value)] * 2,
                                                   "middle": [torch.full((1,), value)]}
    return net


def test_strength_range_and_chaining():
    first = Control(_fake_net(1.0), torch.zeros(1, 3, 8, 8), 2.0)
    second = Control(_fake_net(10.0), torch.zeros(1, 3, 8, 8), 0.5, (0.5, 1.0), previous=first)
    c = {"c_crossattn": torch.zeros(1, 1, 32)}
    x = torch.zeros(1, 4, 1, 1)
    both = second.get_control(x, torch.tensor([4.0]), c, 1, _Model())  # sigma 4 <= 5: both active
    assert [float(r) for r in both["output"]] == [7.0, 7.0] and float(both["middle"][0]) == 7.0 and both["input"] == []
    early = second.get_control(x, torch.tensor([6.0]), c, 1, _Model())  # before 50%: only the first
    assert [float(r) for r in early["output"]] == [2.0, 2.0]
    pooled = Control(_fake_net(0.0), torch.zeros(1, 3, 8, 8), 2.0, global_average_pooling=True)
    merged = pooled._merge({"output": [torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])], "middle": [None]}, None)
    assert merged["output"][0].flatten().tolist() == [8.0] * 4 and merged["middle"] == [None]  # mean 4, x2
    assert Control(_fake_net(1.0), torch.zeros(1, 3, 8, 8), 1.0, (0.2, 0.4)).get_control(
        x, torch.tensor([1.0]), c, 1, _Model()) is None
    with pytest.raises(ValueError, match="expects text conditioning of width 32, the prompt's is 768"):
        Control(ControlNet(tiny_config()), torch.zeros(1, 3, 8, 8)).get_control(
            x, torch.tensor([1.0]), {"c_crossattn": torch.zeros(1, 1, 768)}, 1, _Model())


def test_old_apply_gives_the_negative_its_control():
    ctl = object()
    pos = [Cond(torch.zeros(1, 1, 1), control=ctl, control_apply_to_uncond=True)]
    neg = [Cond(torch.zeros(1, 1, 1)), Cond(torch.zeros(1, 1, 1), area=(1, 1, 0, 0))]
    out = control_to_uncond(pos, neg)
    assert out[0].control is ctl and out[1].control is None and neg[0].control is None
    pos_adv = [Cond(torch.zeros(1, 1, 1), control=ctl, control_apply_to_uncond=False)]
    assert control_to_uncond(pos_adv, neg)[0].control is None


# -- nodes and sampling parity --------------------------------------------------------------
@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "controlnet").mkdir()
    (root / "in").mkdir()
    _with_metadata(REF / "tiny_sd15.safetensors", root / "models" / "checkpoints" / "tiny_sd15.safetensors",
                   {"unet_num_heads": 8, "text_num_heads": 2})
    shutil.copy(CN / "tiny_sd15_controlnet.safetensors", root / "models" / "controlnet")
    shutil.copy(CN / "cn_hint.png", root / "in")
    registry = create_registry()
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(registry, env)


def _graph(batch: int = 1) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    wf.add("cn", "ControlNetLoader", control_net_name="tiny_sd15_controlnet.safetensors")
    wf.add("hint", "LoadImage", image="cn_hint.png")
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=batch)
    return wf


def _sample(executor, wf: Workflow, positive: str, negative: str) -> torch.Tensor:
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=42, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal",
           positive=positive, negative=negative, latent_image="empty", denoise=1.0)
    return executor.run(wf, targets=["k"]).get("k")["samples"]


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The issue's tolerance: within 1e-4 of the reference's largest magnitude."""
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, err


def test_plain_run_is_the_reference_and_control_changes_it(executor):
    plain = _sample(executor, _graph(), "pos", "neg")
    _close(plain, ORACLE["plain"])
    assert float((ORACLE["adv"] - ORACLE["plain"]).abs().max()) > 0.05  # the control is visible


def test_apply_advanced_matches_comfyui(executor):
    wf = _graph()
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="cn", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    _close(_sample(executor, wf, "adv.positive", "adv.negative"), ORACLE["adv"])


def test_apply_old_matches_comfyui(executor):
    wf = _graph()
    wf.add("old", "ControlNetApply", conditioning="pos", control_net="cn", image="hint.IMAGE", strength=1.0)
    _close(_sample(executor, wf, "old", "neg"), ORACLE["old"])


def test_chained_with_range_on_a_batch_matches_comfyui(executor):
    wf = _graph(batch=2)
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="cn", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    wf.add("chain", "ControlNetApplyAdvanced", positive="adv.positive", negative="adv.negative", control_net="cn",
           image="hint.IMAGE", strength=0.5, start_percent=0.25, end_percent=0.75)
    _close(_sample(executor, wf, "chain.positive", "chain.negative"), ORACLE["chain_batch2"])


def test_strength_zero_returns_the_input_unchanged(executor):
    cond = [[torch.zeros(1, 1, 32), {"pooled_output": None}]]
    ctl = Control(ControlNet(tiny_config()), torch.zeros(1, 3, 8, 8))
    assert cn_nodes.ControlNetApply(cond, ctl, torch.zeros(1, 8, 8, 3), 0.0) is cond
    pos, neg = cn_nodes.ControlNetApplyAdvanced(cond, cond, ctl, torch.zeros(1, 8, 8, 3), 0.0, 0.0, 1.0)
    assert pos is cond and neg is cond
    pos, neg = cn_nodes.ControlNetApplyAdvanced(cond, cond, ctl, torch.zeros(1, 8, 8, 3), 0.3, 0.1, 0.9)
    assert pos[0][1]["control"] is neg[0][1]["control"]  # one control: both prompts batch together
    assert pos[0][1]["control"].percent_range == (0.1, 0.9) and "control" not in cond[0][1]


def test_missing_file_is_reported_at_validation(executor):
    wf = Workflow()
    wf.add("cn", "ControlNetLoader", control_net_name="nope.safetensors")
    with pytest.raises(Exception, match="ControlNet 'nope.safetensors' not found"):
        executor.run(wf, targets=["cn"])


@pytest.mark.parametrize("name", ["ControlNetLoader", "DiffControlNetLoader", "ControlNetApply",
                                  "ControlNetApplyAdvanced"])
def test_declaration_matches_comfyui_object_info(name):
    """Inputs, defaults, ranges, outputs, names and flags as ComfyUI's /object_info (the
    file combos list each side's own folder, so only their type is compared)."""
    theirs = json.loads((CN / "object_info.json").read_text())[name]
    ours = create_registry().object_info()[name]
    for key in ("input_order", "output", "output_name", "output_is_list", "display_name", "category",
                "deprecated", "output_node", "python_module"):
        assert ours.get(key) == theirs.get(key), key
    for group in ("required", "optional"):
        for input_name, spec in theirs["input"].get(group, {}).items():
            mine = ours["input"][group][input_name]
            if input_name == "control_net_name":
                assert isinstance(mine[0], list)
            else:
                assert mine == spec, input_name
