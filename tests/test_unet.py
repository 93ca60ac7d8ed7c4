"""UNet: parity with ComfyUI on the tiny reference checkpoints, full-size layouts on the meta
device, config inference, determinism and odd latent sizes."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.models import unet as unet_module
from latentgraph.models.unet import UNetConfig, UNetModel, timestep_embedding, unet_config_from_state_dict

REF = Path(__file__).parent / "fixtures" / "comfy_reference"
PREFIX = "model.diffusion_model."
# ComfyUI ran sub-quadratic attention; SDPA differs by ~1e-6. Tighter than needed for "same
# network" on purpose: a wrong GroupNorm eps in the SpatialTransformer (1e-5 instead of 1e-6)
# already moves the SD1 output by 3e-5.
ATOL = 1e-5

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=32)


def unet_tensors(name: str) -> dict[str, torch.Tensor]:
    sd = load_file(REF / f"{name}.safetensors")
    return {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}


def architecture(name: str) -> dict:
    d = json.loads((REF / f"{name}.json").read_text())
    return d["unet"]["kwargs"] if "unet" in d else d["unet_kwargs"]


# -- parity with ComfyUI --------------------------------------------------------------------
@pytest.mark.parametrize("name, heads", [("tiny_sd15", dict(num_heads=8)), ("tiny_sdxl", dict(num_head_channels=16))])
def test_matches_comfyui(name, heads):
    sd = unet_tensors(name)
    model = UNetModel(unet_config_from_state_dict(sd, **heads)).eval()
    model.load_state_dict(sd, strict=True)
    ref = load_file(REF / f"{name}_ref.safetensors")
    with torch.no_grad():
        out = model(ref["unet/x"], ref["unet/timesteps"], ref["unet/context"], ref.get("unet/y"))
    diff = (out - ref["unet/out"]).abs().max().item()
    assert diff <= ATOL, f"{name}: max abs diff {diff:.3g} vs ComfyUI"


@pytest.mark.parametrize("name, heads", [("tiny_sd15", dict(num_heads=8)), ("tiny_sdxl", dict(num_head_channels=16))])
def test_inferred_config_is_the_reference_architecture(name, heads):
    cfg = unet_config_from_state_dict(unet_tensors(name), **heads)
    arch = architecture(name)
    for field in ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
                  "transformer_depth", "transformer_depth_output", "transformer_depth_middle", "context_dim",
                  "num_heads", "num_head_channels", "use_linear_in_transformer", "adm_in_channels"):
        want = arch[field]
        assert getattr(cfg, field) == (tuple(want) if isinstance(want, list) else want), field


def test_head_count_defaults_follow_the_projection():
    """Shapes cannot show the head count: SD1 (conv proj) gets 8 heads, linear proj 64-wide heads."""
    sd1 = unet_config_from_state_dict(unet_tensors("tiny_sd15"))
    assert (sd1.num_heads, sd1.num_head_channels) == (8, -1)
    xl = unet_config_from_state_dict(unet_tensors("tiny_sdxl"))
    assert (xl.num_heads, xl.num_head_channels) == (-1, 64)


def test_inference_reads_only_shapes():
    sd = {k: SimpleNamespace(shape=list(v.shape)) for k, v in unet_tensors("tiny_sdxl").items()}
    assert unet_config_from_state_dict(sd, num_head_channels=16).adm_in_channels == 1552


# -- full-size layouts ----------------------------------------------------------------------
FULL = {
    "sd15": (UNetConfig.sd15, 859_520_964, {
        "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight": (2560, 320),
        "middle_block.1.transformer_blocks.0.attn1.to_out.0.bias": (1280,),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "time_embed.2.weight": (1280, 1280),
        "out.2.weight": (4, 320, 3, 3)}),
    "sd2": (UNetConfig.sd2, 865_910_724, {
        "input_blocks.1.1.proj_in.weight": (320, 320),
        "input_blocks.7.1.transformer_blocks.0.attn2.to_v.weight": (1280, 1024)}),
    "sdxl": (UNetConfig.sdxl, 2_567_463_684, {
        "label_emb.0.0.weight": (1280, 2816),
        "input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight": (640, 2048),
        "input_blocks.8.1.transformer_blocks.9.norm3.weight": (1280,),
        "middle_block.1.transformer_blocks.9.ff.net.2.weight": (1280, 5120),
        "output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1)}),
    "sdxl_refiner": (UNetConfig.sdxl_refiner, None, {
        "label_emb.0.0.weight": (1536, 2560),
        "input_blocks.4.1.transformer_blocks.3.attn2.to_k.weight": (768, 1280),
        "output_blocks.9.0.skip_connection.weight": (384, 1152, 1, 1)}),
}


@pytest.mark.parametrize("family", FULL)
def test_full_size_layout(family):
    make, n_params, shapes = FULL[family]
    cfg = make()
    with torch.device("meta"):
        model = UNetModel(cfg)
    if n_params is not None:
        assert sum(p.numel() for p in model.parameters()) == n_params
    sd = model.state_dict()
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    assert unet_config_from_state_dict(sd) == cfg
    n_levels = len(cfg.channel_mult)
    assert len(model.output_blocks) == len(cfg.transformer_depth_output) == sum(cfg.num_res_blocks) + n_levels


def test_sdxl_has_no_transformer_at_level_0():
    with torch.device("meta"):
        sd = UNetModel(UNetConfig.sdxl()).state_dict()
    assert not any(k.startswith(("input_blocks.1.1.", "input_blocks.2.1.", "output_blocks.8.1.")) for k in sd)
    assert "output_blocks.0.1.transformer_blocks.9.norm1.weight" in sd
    assert "output_blocks.0.1.transformer_blocks.10.norm1.weight" not in sd


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [UNetConfig.sd15, UNetConfig.sd2, UNetConfig.sdxl, UNetConfig.sdxl_refiner])
def test_config_round_trips_through_json(make):
    cfg = make()
    assert UNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_errors_are_loud():
    with pytest.raises(ValueError, match="transformer_depth_output"):
        UNetConfig(transformer_depth_output=(1, 1))
    with pytest.raises(ValueError, match="exactly one"):
        UNetConfig(num_heads=8, num_head_channels=64)
    with pytest.raises(ValueError, match="num_res_blocks"):
        UNetConfig(num_res_blocks=(2, 2))
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({"model_channel": 320})


def test_timestep_embedding():
    t = torch.tensor([0.0, 250.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    want = [[math.cos(ti * f) for f in freqs] + [math.sin(ti * f) for f in freqs] for ti in t.tolist()]
    torch.testing.assert_close(emb, torch.tensor(want), atol=1e-5, rtol=0)
    assert timestep_embedding(t, 7).shape == (3, 7)


# -- behaviour on a tiny random model -------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return UNetModel(TINY).eval()


def inputs(h: int, w: int, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(batch, 4, h, w, generator=g), torch.tensor([999.0, 10.0][:batch]),
            torch.randn(batch, 77, 32, generator=g))


@torch.no_grad()
def test_deterministic(tiny):
    x, t, ctx = inputs(64, 64)
    assert torch.equal(tiny(x, t, ctx), tiny(x, t, ctx))


@pytest.mark.parametrize("h, w", [(64, 64), (48, 80), (9, 13), (7, 7)])
@torch.no_grad()
def test_output_shape_equals_input(tiny, h, w):
    """Odd sizes round up going down; each Upsample grows to its skip's size."""
    x, t, ctx = inputs(h, w)
    assert tiny(x, t, ctx).shape == x.shape


@torch.no_grad()
def test_channels_last_gives_the_same_result(tiny):
    x, t, ctx = inputs(48, 80)
    want = tiny(x, t, ctx)
    got = tiny.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, ctx)
    tiny.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_y_must_match_label_emb(tiny):
    x, t, ctx = inputs(8, 8)
    with pytest.raises(ValueError, match="adm_in_channels"):
        tiny(x, t, ctx, torch.zeros(2, 16))
    xl = UNetModel(UNetConfig(**{**TINY.to_dict(), "num_heads": -1, "num_head_channels": 16,
                                 "use_linear_in_transformer": True, "adm_in_channels": 16}))
    with pytest.raises(ValueError, match="adm_in_channels"):
        xl(x, t, ctx)
    assert xl(x, t, ctx, torch.zeros(2, 16)).shape == x.shape


def test_models_never_import_the_engine():
    tree = ast.parse(Path(unet_module.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in names if m.startswith(("latentgraph.graph", "latentgraph.nodes", "graph", "nodes"))]
