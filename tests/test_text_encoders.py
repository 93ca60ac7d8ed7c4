"""Text encoders: key conversion both ways, clip skip, weighting, and parity with ComfyUI's
encodings on the tiny reference checkpoints (token ids from the reference JSON)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.models.text_encoders import (BOS, EOS, ClipTextEncoder, EncoderRole, TextEncoderConfig,
                                              config_from_keys, hf_clip_keys, openclip_keys, to_hf_clip_keys,
                                              to_openclip_keys)
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"


@pytest.fixture(scope="module")
def sd1():
    sd = load_file(REF / "tiny_sd15.safetensors")
    keys = hf_clip_keys(sd, "cond_stage_model.transformer.")
    enc = ClipTextEncoder(config_from_keys(keys, "quick_gelu", num_heads=2), EncoderRole.sd1())
    enc.load_state_dict(keys, strict=True)
    ref = load_file(REF / "tiny_sd15_ref.safetensors")
    tokens = json.loads((REF / "tiny_sd15_ref.json").read_text())["clip_tokens"]
    return enc.eval(), ref, tokens


@pytest.mark.parametrize("name", ["a_red_circle", "empty", "blurry", "blue_background", "words_100"])
def test_sd1_parity(sd1, name):
    enc, ref, tokens = sd1
    chunks = [[(t, 1.0) for t in chunk] for chunk in tokens[name]]
    with torch.no_grad():
        cond, pooled = enc.encode_chunks(chunks)
    assert cond.shape == ref[f"clip/{name}/cond"].shape == (1, 77 * len(chunks), 32)
    assert (cond - ref[f"clip/{name}/cond"]).abs().max() < 1e-5
    assert (pooled - ref[f"clip/{name}/pooled"]).abs().max() < 1e-5


def test_sd1_clip_skip_changes_cond_not_pooled(sd1):
    enc, ref, tokens = sd1
    chunks = [[(t, 1.0) for t in tokens["a_red_circle_clipskip2"][0]]]
    with torch.no_grad():
        cond, pooled = enc.encode_chunks(chunks, layer_idx=-2)
    assert (cond - ref["clip/a_red_circle_clipskip2/cond"]).abs().max() < 1e-5
    assert (pooled - ref["clip/a_red_circle/pooled"]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="outside -1..-2"):
        enc.encode_chunks(chunks, layer_idx=-3)


def test_weights_move_tokens_away_from_the_empty_prompt(sd1):
    enc, _, tokens = sd1
    ids = tokens["a_red_circle"][0]
    plain = [[(t, 1.0) for t in ids]]
    weighted = [[(t, 1.3 if i in (1, 2, 3) else 1.0) for i, t in enumerate(ids)]]
    empty = [[(t, 1.0) for t in [BOS, EOS] + [EOS] * 75]]
    with torch.no_grad():
        z, _ = enc.encode_chunks(plain)
        zw, pooled_w = enc.encode_chunks(weighted)
        z_empty, _ = enc.encode_chunks(empty)
    expected = z.clone()
    expected[0, 1:4] = (z[0, 1:4] - z_empty[0, 1:4]) * 1.3 + z_empty[0, 1:4]
    assert torch.allclose(zw, expected, atol=1e-5)
    assert torch.equal(zw[0, 4:], z[0, 4:])


def test_embeddings_of_another_width_are_dropped_and_padded(sd1):
    enc, _, tokens = sd1
    ids = tokens["a_red_circle"][0]
    with_foreign = [[ids[0], torch.ones(1280), *ids[1:76]]]
    kept = enc._fit_embeddings([(t, 1.0) for t in with_foreign[0]], 32)
    assert len(kept) == 77 and kept[-1] == (EOS, 1.0) and not any(isinstance(t, torch.Tensor) for t, _ in kept)


def test_textual_inversion_vectors_replace_token_embeddings(sd1):
    enc, _, tokens = sd1
    ids = tokens["a_red_circle"][0]
    vec = enc.transformer.embeddings.token_embedding.weight[7117].detach().clone()
    as_vector = [[(vec if t == 7117 else t, 1.0) for t in ids]]
    with torch.no_grad():
        a, pa = enc.encode_chunks([[(t, 1.0) for t in ids]])
        b, pb = enc.encode_chunks(as_vector)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(pa, pb, atol=1e-6)


def test_sdxl_parity_both_encoders():
    sd = load_file(REF / "tiny_sdxl.safetensors")
    ref = load_file(REF / "tiny_sdxl_ref.safetensors")
    lk = hf_clip_keys(sd, "conditioner.embedders.0.transformer.")
    gk = openclip_keys(sd, "conditioner.embedders.1.model.")
    l_enc = ClipTextEncoder(config_from_keys(lk, "quick_gelu", 2), EncoderRole.sdxl_l())
    g_enc = ClipTextEncoder(config_from_keys(gk, "gelu", 2), EncoderRole.sdxl_g())
    l_enc.load_state_dict(lk, strict=True)
    g_enc.load_state_dict(gk, strict=True)
    for name, ids in (("a_red_circle", [BOS, 320, 736, 7117, EOS]), ("blurry", None)):
        if ids is None:
            continue
        with torch.no_grad():
            l_cond, _ = l_enc.encode_chunks([[(t, 1.0) for t in ids + [EOS] * (77 - len(ids))]])
            g_cond, pooled = g_enc.encode_chunks([[(t, 1.0) for t in ids + [0] * (77 - len(ids))]])
        cond = torch.cat([l_cond, g_cond], dim=-1)
        assert (cond - ref[f"clip/{name}/cond"]).abs().max() < 1e-5
        assert (pooled - ref[f"clip/{name}/pooled"]).abs().max() < 1e-5


def test_openclip_conversion_round_trips_and_matches_a_fused_attention():
    torch.manual_seed(0)
    cfg = TextEncoderConfig(16, 32, 2, 2, act="gelu", projection_dim=8)
    enc = ClipTextEncoder(cfg, EncoderRole.sdxl_g())
    ours = enc.state_dict()
    original = to_openclip_keys(ours, "m.")
    assert original["m.transformer.resblocks.0.attn.in_proj_weight"].shape == (48, 16)
    assert original["m.text_projection"].shape == (16, 8)  # used as x @ P
    back = openclip_keys(original, "m.")
    assert set(back) == set(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    hf = to_hf_clip_keys(ours, "c.transformer.text_model.")
    assert "c.transformer.text_model.encoder.layers.1.mlp.fc2.weight" in hf
    # a fused in_proj computes the same q/k/v as the split projections
    x = torch.randn(3, 16)
    fused = x @ original["m.transformer.resblocks.0.attn.in_proj_weight"].t()
    layer = enc.transformer.encoder.layers[0].self_attn
    split = torch.cat([layer.q_proj(x) - layer.q_proj.bias, layer.k_proj(x) - layer.k_proj.bias,
                       layer.v_proj(x) - layer.v_proj.bias], dim=-1)
    assert torch.allclose(fused, split, atol=1e-6)


def test_unknown_openclip_keys_are_kept_for_the_strict_load_to_report():
    keys = openclip_keys({"m.transformer.resblocks.0.weird.weight": torch.zeros(1)}, "m.")
    assert list(keys) == ["unknown.transformer.resblocks.0.weird.weight"]


def test_full_size_configs_have_the_published_sizes():
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in ClipTextEncoder(cfg).parameters())
                  for name, cfg in (("l", TextEncoderConfig.clip_l()), ("h", TextEncoderConfig.vit_h()),
                                    ("g", TextEncoderConfig.vit_bigg()))}
    assert counts["l"] == 123_060_480  # CLIP ViT-L/14 text tower
    assert counts["h"] == 354_032_640  # OpenCLIP ViT-H/14 text tower: 50.6M embeddings + 24 x 12.6M + projection
    assert counts["g"] == 694_659_840  # OpenCLIP ViT-bigG/14 text tower, with text_projection
