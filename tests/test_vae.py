"""VAE: parity with ComfyUI on the tiny reference checkpoints, the full-size layout on the meta
device, config inference, alternative file layouts, tiled encode/decode and determinism."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from latentgraph.models import vae as vae_module
from latentgraph.models.vae import AutoencoderKL, VAEConfig, vae_config_from_state_dict, vae_keys

REF = Path(__file__).parent / "fixtures" / "comfy_reference"
PREFIX = "first_stage_model."
# Measured: 4.6e-6 on decode, 2.4e-7 on encode (ComfyUI's attention kernel differs slightly from
# SDPA). A wrong GroupNorm eps (1e-5 instead of 1e-6) already moves both by 2.4e-4.
ATOL = 2e-5


def tiny_tensors(name: str) -> dict[str, torch.Tensor]:
    return vae_keys(load_file(REF / f"{name}.safetensors"), PREFIX)


def ddconfig(name: str) -> VAEConfig:
    """The VAEConfig equal to the LDM ddconfig + embed_dim written in the fixture's JSON."""
    vae = json.loads((REF / f"{name}.json").read_text())["vae"]
    dd = vae["ddconfig"]
    assert dd["attn_resolutions"] == [] and dd["dropout"] == 0.0  # the SD VAE has neither
    keep = ("ch", "ch_mult", "num_res_blocks", "z_channels", "in_channels", "out_ch", "double_z")
    return VAEConfig(embed_dim=vae["embed_dim"], **{k: dd[k] for k in keep})


def load_tiny(name: str) -> AutoencoderKL:
    sd = tiny_tensors(name)
    model = AutoencoderKL(vae_config_from_state_dict(sd))
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def tiny() -> AutoencoderKL:
    return load_tiny("tiny_sd15")


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(REF / "tiny_sd15_ref.safetensors")


def smooth_image(h: int, w: int) -> torch.Tensor:
    """(1, 3, h, w) in [-1, 1], low-frequency everywhere."""
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.6 * torch.sin(3 * x + 1), 1.2 * y - 0.6, 0.5 * torch.cos(2 * (x + y))])[None]


# -- parity with ComfyUI --------------------------------------------------------------------
def test_decode_matches_comfy(tiny, ref):
    raw = tiny.decode(ref["vae/decode_in_latent"])  # (1, 3, 64, 64)
    assert raw.shape == ref["vae/decode_raw_decoder_out"].shape
    diff = (raw - ref["vae/decode_raw_decoder_out"]).abs().max().item()
    assert diff <= ATOL, f"raw decoder output differs from ComfyUI by {diff:.3g}"
    image = ((raw + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)  # IMAGE: (B, H, W, C) in 0..1
    assert (image - ref["vae/decode_out_image"]).abs().max().item() <= ATOL


def test_encode_returns_the_posterior_mean_like_comfy(tiny, ref):
    pixels = ref["vae/test_image"].permute(0, 3, 1, 2) * 2 - 1  # (1, 3, 64, 64) in [-1, 1]
    latent = tiny.encode(pixels)
    assert latent.shape == (1, 4, 8, 8)
    diff = (latent - ref["vae/encode_out_latent"]).abs().max().item()
    assert diff <= ATOL, f"encoded latent differs from ComfyUI by {diff:.3g}"
    logvar = tiny.quant_conv(tiny.encoder(pixels))[:, 4:]  # the half encode() drops
    assert (logvar - ref["vae/encode_moments_logvar"]).abs().max().item() <= ATOL


# -- configs and layouts --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny_sd15", "tiny_sdxl"])
def test_inferred_config_equals_the_ddconfig_and_loads_strictly(name):
    sd = tiny_tensors(name)
    config = vae_config_from_state_dict(sd)
    assert config == ddconfig(name)
    model = AutoencoderKL(config)
    model.load_state_dict(sd, strict=True)
    assert model.downscale == 8


def test_full_size_layout_on_meta():
    with torch.device("meta"):
        model = AutoencoderKL(VAEConfig.sd())
    assert sum(p.numel() for p in model.parameters()) == 83_653_863
    sd = model.state_dict()
    assert sd["encoder.down.1.block.0.nin_shortcut.weight"].shape == (256, 128, 1, 1)
    assert sd["decoder.up.3.block.0.conv1.weight"].shape == (512, 512, 3, 3)
    assert sd["decoder.up.0.block.2.conv2.weight"].shape == (128, 128, 3, 3)  # num_res_blocks + 1 per level
    assert sd["encoder.conv_out.weight"].shape == (8, 512, 3, 3)  # double_z
    assert sd["quant_conv.weight"].shape == (8, 8, 1, 1)
    assert sd["post_quant_conv.weight"].shape == (4, 4, 1, 1)
    assert "encoder.down.3.downsample.conv.weight" not in sd and "decoder.up.0.upsample.conv.weight" not in sd
    assert vae_config_from_state_dict(sd) == VAEConfig.sd()
    assert model.downscale == 8


def test_config_from_shapes_alone_and_loud_errors():
    shapes = {k: SimpleNamespace(shape=tuple(v.shape)) for k, v in tiny_tensors("tiny_sd15").items()}
    assert vae_config_from_state_dict(shapes) == ddconfig("tiny_sd15")
    with pytest.raises(ValueError, match="vae_keys"):
        vae_config_from_state_dict({PREFIX + k: v for k, v in shapes.items()})  # prefix left on
    shapes = {k: v for k, v in shapes.items() if not k.startswith("decoder.up.0.block.1.")}
    with pytest.raises(ValueError, match="decoder does not mirror"):
        vae_config_from_state_dict(shapes)


def test_config_json_round_trip():
    config = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["ch_mult"] == [1, 2, 2, 2]
    assert VAEConfig.from_dict(d) == config
    with pytest.raises(ValueError, match="unknown VAEConfig fields: resolution"):
        VAEConfig.from_dict({**d, "resolution": 256})
    with pytest.raises(ValueError, match="multiple of 32"):
        VAEConfig(ch=48)


def test_vae_keys_drops_ema_and_loss_tensors():
    sd = tiny_tensors("tiny_sd15")
    standalone = {**sd, "model_ema.decay": torch.tensor(0.999), "model_ema.encoderconv_inweight": torch.zeros(1),
                  "loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.zeros(1)}
    assert vae_keys(standalone) == sd
    prefixed = {PREFIX + k: v for k, v in standalone.items()}
    prefixed["model.diffusion_model.out.2.weight"] = torch.zeros(1)
    assert vae_keys(prefixed, PREFIX) == sd


def test_linear_shaped_attention_weights_load(tiny, ref):
    sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    names = [f"{part}.mid.attn_1.{p}.weight" for part in ("encoder", "decoder") for p in ("q", "k", "v", "proj_out")]
    linear = {**sd, **{k: sd[k][:, :, 0, 0] for k in names}}  # (C, C) as converted files store them
    model = AutoencoderKL(vae_config_from_state_dict(linear))
    model.load_state_dict(linear, strict=True)
    assert all(linear[k].ndim == 2 for k in names)  # the caller's dict is left alone
    z = ref["vae/decode_in_latent"]
    with torch.no_grad():
        assert torch.equal(model.decode(z), tiny.decode(z))


def test_odd_sizes_round_down_like_the_original(tiny):
    assert tiny.encode(smooth_image(65, 71)).shape == (1, 4, 8, 8)
    assert tiny.decode(torch.randn(2, 4, 13, 9, generator=torch.manual_seed(0))).shape == (2, 3, 104, 72)


def test_deterministic(tiny):
    z = torch.randn(1, 4, 10, 12, generator=torch.manual_seed(5))
    assert torch.equal(tiny.decode(z), tiny.decode(z))
    assert torch.equal(tiny.decode_tiled(z, 8, 4), tiny.decode_tiled(z, 8, 4))
    x = smooth_image(72, 88)
    assert torch.equal(tiny.encode(x), tiny.encode(x))
    assert torch.equal(tiny.encode_tiled(x, 48, 16), tiny.encode_tiled(x, 48, 16))


# -- tiling ---------------------------------------------------------------------------------
def test_tiled_is_exact_when_one_tile_covers(tiny, ref):
    z = ref["vae/decode_in_latent"]  # (1, 4, 8, 8)
    x = ref["vae/test_image"].permute(0, 3, 1, 2) * 2 - 1  # (1, 3, 64, 64)
    assert torch.equal(tiny.decode_tiled(z, tile=8, overlap=2), tiny.decode(z))
    assert torch.equal(tiny.decode_tiled(z), tiny.decode(z))  # default tile 64 > 8
    assert torch.equal(tiny.encode_tiled(x, tile=64, overlap=16), tiny.encode(x))
    assert torch.equal(tiny.encode_tiled(x), tiny.encode(x))


def test_tiles_are_bounded_and_cover_odd_sizes(tiny):
    """Every call sees at most tile x tile; the blend covers sizes that are not multiples of the tile."""
    seen = []
    model = AutoencoderKL(tiny.config)
    model.load_state_dict(tiny.state_dict())
    real_encode, real_decode = model.encode, model.decode
    model.encode = lambda t: seen.append(("e", *t.shape[-2:])) or real_encode(t)
    model.decode = lambda t: seen.append(("d", *t.shape[-2:])) or real_decode(t)
    with torch.no_grad():
        latent = model.encode_tiled(smooth_image(100, 84), tile=48, overlap=16)  # 100 = 12.5 latents
        image = model.decode_tiled(latent, tile=5, overlap=2)
    assert latent.shape == (1, 4, 12, 10) and image.shape == (1, 3, 96, 80)
    assert torch.isfinite(latent).all() and torch.isfinite(image).all()
    assert max(max(h, w) for kind, h, w in seen if kind == "e") <= 48
    assert max(max(h, w) for kind, h, w in seen if kind == "d") <= 5
    assert sum(kind == "e" for kind, *_ in seen) == 9 and sum(kind == "d" for kind, *_ in seen) == 12


def test_tiled_blend_matches_untiled_on_a_local_network():
    """With a stand-in network that only looks at its own pixels, tiling must reproduce the untiled
    result: the tiles cover everything and the feather weights sum to one."""
    model = AutoencoderKL(VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1))
    model.encode = lambda t: F.avg_pool2d(t, 8, ceil_mode=False).repeat(1, 2, 1, 1)[:, :4]  # floors like the VAE
    model.decode = lambda t: F.interpolate(t[:, :3], scale_factor=8.0, mode="nearest") * 2
    x = torch.randn(2, 3, 117, 90, generator=torch.manual_seed(3))  # not multiples of the tile or of 8
    z = torch.randn(2, 4, 19, 13, generator=torch.manual_seed(4))
    for tile, overlap in [(32, 8), (40, 16), (64, 0)]:
        got, want = model.encode_tiled(x, tile, overlap), model.encode(x)
        assert got.shape == want.shape == (2, 4, 14, 11)
        assert (got - want).abs().max() < 1e-5
    for tile, overlap in [(6, 2), (8, 4), (7, 0)]:
        got, want = model.decode_tiled(z, tile, overlap), model.decode(z)
        assert got.shape == want.shape == (2, 3, 152, 104)
        assert (got - want).abs().max() < 1e-5


def test_tiled_argument_errors(tiny):
    with pytest.raises(ValueError, match="multiples of the VAE's downscale 8"):
        tiny.encode_tiled(smooth_image(64, 64), tile=60, overlap=16)
    with pytest.raises(ValueError, match="overlap < tile"):
        tiny.decode_tiled(torch.zeros(1, 4, 16, 16), tile=8, overlap=8)


def test_models_never_import_the_engine():
    tree = ast.parse(Path(vae_module.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if "graph" in n or "nodes" in n]
