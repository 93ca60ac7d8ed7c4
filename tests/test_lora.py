"""LoRA: every naming style lands on the right parameter as W + s * scale * (up @ down),
exactly; the base stays bit-identical and shares every untouched tensor; strength scales the
delta linearly; SDXL's two text encoders get their own keys; unmatched keys are reported,
misfits refused all at once; pickles are refused; the diffusers UNet names match the
full-size layouts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from latentgraph.models.checkpoint import load_checkpoint, read_state_dict, split_state_dict
from latentgraph.models.lora import (Diff, LoraError, LowRank, apply_lora, diffusers_unet_names, load_lora_into,
                                     lora_patches, read_lora)
from latentgraph.models.make import make_checkpoint
from latentgraph.models.unet import UNetConfig, UNetModel

ALPHA, RANK = 3.0, 4  # scale 0.75
STRENGTH = 0.7
FORMATS = {  # suffixes of (up, down) and whether the format stores an alpha
    "kohya": (".lora_up.weight", ".lora_down.weight", True),
    "peft": (".lora_B.weight", ".lora_A.weight", False),
    "diffusers": (".lora.up.weight", ".lora.down.weight", False),
    "processor": ("_lora.up.weight", "_lora.down.weight", False),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lora_ckpt")
    out = {}
    for family in ("sd15", "sdxl"):
        make_checkpoint(folder / f"{family}.safetensors", family, "tiny")
        out[family] = load_checkpoint(folder / f"{family}.safetensors")
    return out


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen) * 0.1


def low_rank(gen: torch.Generator, shape: torch.Size, rank: int = RANK) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) for a weight: (out, r) and (r, in) for a Linear; kohya LoCon's
    (out, r, 1, 1) and (r, in, kh, kw) for a conv."""
    if len(shape) == 4:
        return randn(gen, shape[0], rank, 1, 1), randn(gen, rank, *shape[1:])
    return randn(gen, shape[0], rank), randn(gen, rank, shape[1])


def lora_entry(name: str, fmt: str, up: torch.Tensor, down: torch.Tensor) -> dict[str, torch.Tensor]:
    up_suffix, down_suffix, has_alpha = FORMATS[fmt]
    out = {name + up_suffix: up, name + down_suffix: down}
    if has_alpha:
        out[name + ".alpha"] = torch.tensor(ALPHA)
    return out


def expected(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, strength: float, scale: float) -> torch.Tensor:
    """W + s * scale * (up @ down) in float32, flattened conv kernels."""
    return weight.float() + (strength * scale) * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)


def save(tmp_path, tensors: dict, name: str = "lora.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.uint8)


def assert_base_untouched(ck) -> None:
    """Every UNet and text-encoder tensor is bit-identical to the file's."""
    sd, _ = read_state_dict(ck.source)
    parts = split_state_dict(sd, ck.arch)
    for part, module in (("unet", ck.unet), *((f"text.{n}", e) for n, e in ck.text.items())):
        ours = module.state_dict()
        for key, value in parts[part].items():
            assert torch.equal(bits(ours[key]), bits(value)), f"{part} {key} changed"


def assert_shares_unpatched(base: torch.nn.Module, patched: torch.nn.Module, patched_names) -> None:
    new = dict(patched.named_parameters())
    for name, param in base.named_parameters():
        if name in patched_names:
            assert new[name] is not param
        else:
            assert new[name] is param, f"{name} was copied"
    new_buffers = dict(patched.named_buffers())
    assert all(new_buffers[n] is b for n, b in base.named_buffers())


def run_unet(unet: torch.nn.Module, family: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x, context = torch.randn(1, 4, 8, 8, generator=gen), torch.randn(1, 5, 32, generator=gen)
    y = torch.randn(1, 16 + 6 * 256, generator=gen) if family == "sdxl" else None
    with torch.no_grad():
        return unet(x, torch.tensor([500.0]), context, y)


def run_text(encoder: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[49406, 320, 1125, 539, 49407, 49407]])
    with torch.no_grad():
        hidden, pooled = encoder(ids)
    return torch.cat([hidden.flatten(), pooled.flatten()])


# -- each naming style reaches its parameter -------------------------------------------------
UNET_STYLES = {  # style: (LoRA module name, format, our module path) on the tiny SD1 UNet
    "kohya_ldm": ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "kohya",
                  "input_blocks.1.1.transformer_blocks.0.attn1.to_q"),
    "kohya_diffusers_attn": ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0", "kohya",
                             "input_blocks.3.1.transformer_blocks.0.attn1.to_out.0"),
    "kohya_diffusers_ff": ("lora_unet_up_blocks_1_attentions_1_transformer_blocks_0_ff_net_2", "kohya",
                           "output_blocks.3.1.transformer_blocks.0.ff.net.2"),
    "kohya_diffusers_proj_in": ("lora_unet_down_blocks_0_attentions_0_proj_in", "kohya", "input_blocks.1.1.proj_in"),
    "kohya_diffusers_mid_resnet": ("lora_unet_mid_block_resnets_1_time_emb_proj", "kohya",
                                   "middle_block.2.emb_layers.1"),
    "kohya_diffusers_conv1": ("lora_unet_up_blocks_0_resnets_1_conv1", "kohya", "output_blocks.1.0.in_layers.2"),
    "kohya_diffusers_shortcut": ("lora_unet_up_blocks_1_resnets_0_conv_shortcut", "kohya",
                                 "output_blocks.2.0.skip_connection"),
    "kohya_diffusers_downsampler": ("lora_unet_down_blocks_0_downsamplers_0_conv", "kohya", "input_blocks.2.0.op"),
    "kohya_diffusers_upsampler": ("lora_unet_up_blocks_0_upsamplers_0_conv", "kohya", "output_blocks.1.2.conv"),
    "kohya_diffusers_conv_in": ("lora_unet_conv_in", "kohya", "input_blocks.0.0"),
    "kohya_diffusers_time": ("lora_unet_time_embedding_linear_2", "kohya", "time_embed.2"),
    "ldm_key": ("model.diffusion_model.output_blocks.3.1.proj_in", "kohya", "output_blocks.3.1.proj_in"),
    "ldm_key_short": ("diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k", "kohya",
                      "middle_block.1.transformer_blocks.0.attn2.to_k"),
    "peft": ("unet.mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj", "peft",
             "middle_block.1.transformer_blocks.0.ff.net.0.proj"),
    "diffusers_bare": ("up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_q", "diffusers",
                       "output_blocks.0.1.transformer_blocks.0.attn2.to_q"),
    "diffusers_processor": ("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_v", "processor",
                            "input_blocks.1.1.transformer_blocks.0.attn2.to_v"),
    "diffusers_processor_out": ("unet.up_blocks.1.attentions.1.transformer_blocks.0.attn1.processor.to_out",
                                "processor", "output_blocks.3.1.transformer_blocks.0.attn1.to_out.0"),
}


@pytest.mark.parametrize("style", UNET_STYLES)
def test_unet_naming_styles(models, tmp_path, style):
    ck = models["sd15"]
    name, fmt, path = UNET_STYLES[style]
    param = path + ".weight"
    weight = ck.unet.get_parameter(param)
    up, down = low_rank(torch.Generator().manual_seed(0), weight.shape)
    sd = read_lora(save(tmp_path, lora_entry(name, fmt, up, down)))
    unet_patches, text_patches, unmatched = lora_patches(sd, "sd15", ck.unet, ck.text)
    assert unmatched == [] and list(unet_patches) == [param] and text_patches == {"l": {}}
    scale = ALPHA / RANK if FORMATS[fmt][2] else 1.0
    assert unet_patches[param].scale == scale
    patched = apply_lora(ck.unet, unet_patches, STRENGTH)
    new = patched.get_parameter(param)
    assert new.dtype == weight.dtype and torch.equal(new, expected(weight, up, down, STRENGTH, scale))
    assert_shares_unpatched(ck.unet, patched, {param})
    assert_base_untouched(ck)


def test_half_precision_weights_are_summed_in_float32(models, tmp_path):
    ck = load_checkpoint(models["sd15"].source, dtypes={"unet": torch.bfloat16})
    name, fmt, path = UNET_STYLES["peft"]
    weight = ck.unet.get_parameter(path + ".weight")
    up, down = low_rank(torch.Generator().manual_seed(11), weight.shape)
    unet_patches, _, _ = lora_patches(lora_entry(name, fmt, up.half(), down.half()), "sd15", ck.unet, {})
    new = apply_lora(ck.unet, unet_patches, STRENGTH).get_parameter(path + ".weight")
    assert new.dtype == torch.bfloat16
    assert torch.equal(new, expected(weight, up.half().float(), down.half().float(), STRENGTH, 1.0).bfloat16())


def test_locon_mid_is_the_conv_chain(models, tmp_path):
    """LoCon's Tucker form: the patched conv adds down (1x1) -> mid (3x3) -> up (1x1)."""
    ck = models["sd15"]
    name, param = "lora_unet_input_blocks_1_0_in_layers_2", "input_blocks.1.0.in_layers.2.weight"
    weight = ck.unet.get_parameter(param)  # (32, 32, 3, 3)
    gen = torch.Generator().manual_seed(2)
    up, down, mid = randn(gen, 32, RANK, 1, 1), randn(gen, RANK, 32, 1, 1), randn(gen, RANK, RANK, 3, 3)
    sd = lora_entry(name, "kohya", up, down) | {name + ".lora_mid.weight": mid}
    unet_patches, _, unmatched = lora_patches(read_lora(save(tmp_path, sd)), "sd15", ck.unet, {})
    assert unmatched == [] and isinstance(unet_patches[param], LowRank)
    new = apply_lora(ck.unet, unet_patches, STRENGTH).get_parameter(param)
    x = torch.randn(1, 32, 6, 6, generator=gen)
    chain = F.conv2d(F.conv2d(F.conv2d(x, down), mid, padding=1), up)
    got = F.conv2d(x, new, padding=1) - F.conv2d(x, weight, padding=1)
    torch.testing.assert_close(got, STRENGTH * ALPHA / RANK * chain, atol=1e-5, rtol=1e-4)


def test_full_diffs(models, tmp_path):
    """.diff and .diff_b add to the weight and the bias; a norm's weight takes one too."""
    ck = models["sd15"]
    gen = torch.Generator().manual_seed(3)
    w, b, norm = (ck.unet.get_parameter(p) for p in ("time_embed.0.weight", "time_embed.0.bias", "out.0.weight"))
    dw, db, dn = randn(gen, *w.shape), randn(gen, *b.shape), randn(gen, *norm.shape)
    sd = {"diffusion_model.time_embed.0.diff": dw, "diffusion_model.time_embed.0.diff_b": db,
          "lora_unet_out_0.diff": dn}
    unet_patches, _, unmatched = lora_patches(read_lora(save(tmp_path, sd)), "sd15", ck.unet, ck.text)
    assert unmatched == [] and all(isinstance(p, Diff) for p in unet_patches.values())
    patched = apply_lora(ck.unet, unet_patches, STRENGTH)
    for param, base, diff in (("time_embed.0.weight", w, dw), ("time_embed.0.bias", b, db), ("out.0.weight", norm, dn)):
        assert torch.equal(patched.get_parameter(param), base + STRENGTH * diff)
    assert_base_untouched(ck)


# -- applying: outputs, strength, sharing, stacking ---------------------------------------------
def attention_lora(unet: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """A kohya LoRA on every attention projection of the UNet."""
    gen, out = torch.Generator().manual_seed(seed), {}
    for param, weight in unet.named_parameters():
        if ".attn" in param and param.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight")):
            name = "lora_unet_" + param[: -len(".weight")].replace(".", "_")
            out |= lora_entry(name, "kohya", *low_rank(gen, weight.shape))
    return out


def test_outputs_strength_and_base(models, tmp_path):
    ck = models["sd15"]
    sd = read_lora(save(tmp_path, attention_lora(ck.unet, seed=4)))
    unet_patches, _, unmatched = lora_patches(sd, "sd15", ck.unet, ck.text)
    assert unmatched == [] and len(unet_patches) == 4 * 2 * 7  # 4 projections, 2 attentions, 7 transformers
    before = run_unet(ck.unet, "sd15")
    once, twice, zero = (apply_lora(ck.unet, unet_patches, s) for s in (STRENGTH, 2 * STRENGTH, 0.0))
    assert torch.equal(run_unet(ck.unet, "sd15"), before)  # the base still computes what it did
    assert_base_untouched(ck)
    assert not torch.allclose(run_unet(once, "sd15"), before)
    assert torch.equal(run_unet(zero, "sd15"), before)
    assert zero is not ck.unet and once is not ck.unet
    assert_shares_unpatched(ck.unet, zero, set())
    for param in unet_patches:
        base = ck.unet.get_parameter(param)
        d1, d2 = once.get_parameter(param) - base, twice.get_parameter(param) - base
        assert d1.abs().max() > 0
        torch.testing.assert_close(d2, 2 * d1, atol=1e-6, rtol=1e-5)


def test_loras_stack(models, tmp_path):
    ck = models["sd15"]
    a = lora_patches(read_lora(save(tmp_path, attention_lora(ck.unet, 5), "a.safetensors")), "sd15", ck.unet, {})[0]
    b = lora_patches(read_lora(save(tmp_path, attention_lora(ck.unet, 6), "b.safetensors")), "sd15", ck.unet, {})[0]
    first = apply_lora(ck.unet, a, 1.0)
    snapshot = {n: p.clone() for n, p in first.named_parameters()}
    both = apply_lora(first, b, 0.5)
    for param in a:
        base = ck.unet.get_parameter(param)
        want = base + a[param].delta(base.shape, 1.0, base.device) + b[param].delta(base.shape, 0.5, base.device)
        torch.testing.assert_close(both.get_parameter(param), want, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(p, snapshot[n]) for n, p in first.named_parameters())  # the first result is kept
    assert both.get_parameter("out.2.weight") is ck.unet.get_parameter("out.2.weight")
    assert_base_untouched(ck)


# -- text encoders --------------------------------------------------------------------------
def test_sd15_text_encoder(models, tmp_path):
    ck = models["sd15"]
    enc = ck.text["l"]
    gen = torch.Generator().manual_seed(7)
    targets = {  # LoRA module name, format -> our module path
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", "kohya"):
            "transformer.encoder.layers.0.self_attn.q_proj",
        ("text_encoder.text_model.encoder.layers.1.mlp.fc1", "peft"): "transformer.encoder.layers.1.mlp.fc1",
        ("cond_stage_model.transformer.text_model.encoder.layers.1.self_attn.out_proj", "kohya"):
            "transformer.encoder.layers.1.self_attn.out_proj",
    }
    sd, parts = {}, {}
    for (name, fmt), path in targets.items():
        up, down = low_rank(gen, enc.get_parameter(path + ".weight").shape)
        sd |= lora_entry(name, fmt, up, down)
        parts[path + ".weight"] = (up, down, ALPHA / RANK if FORMATS[fmt][2] else 1.0)
    before = run_text(enc)
    unet, text, unmatched = load_lora_into(save(tmp_path, sd), "sd15", ck.unet, ck.text, 1.0, STRENGTH)
    assert unmatched == [] and set(text) == {"l"}
    assert_shares_unpatched(ck.unet, unet, set())
    for param, (up, down, scale) in parts.items():
        want = expected(enc.get_parameter(param), up, down, STRENGTH, scale)
        assert torch.equal(text["l"].get_parameter(param), want)
    assert_shares_unpatched(enc, text["l"], set(parts))
    assert torch.equal(run_text(enc), before)
    assert not torch.allclose(run_text(text["l"]), before)
    assert_base_untouched(ck)


SDXL_TARGETS = {  # LoRA module name, format -> (part, our module path)
    ("lora_te1_text_model_encoder_layers_0_mlp_fc2", "kohya"): ("l", "transformer.encoder.layers.0.mlp.fc2"),
    ("lora_te2_text_model_encoder_layers_0_mlp_fc2", "kohya"): ("g", "transformer.encoder.layers.0.mlp.fc2"),
    ("lora_te2_text_model_encoder_layers_1_self_attn_v_proj", "kohya"):
        ("g", "transformer.encoder.layers.1.self_attn.v_proj"),
    ("text_encoder_2.text_model.encoder.layers.2.self_attn.out_proj", "peft"):
        ("g", "transformer.encoder.layers.2.self_attn.out_proj"),
    ("text_encoder.text_model.encoder.layers.2.self_attn.k_proj", "peft"):
        ("l", "transformer.encoder.layers.2.self_attn.k_proj"),
    ("conditioner.embedders.1.model.transformer.resblocks.1.mlp.c_fc", "kohya"):
        ("g", "transformer.encoder.layers.1.mlp.fc1"),
    ("conditioner.embedders.0.transformer.text_model.encoder.layers.1.mlp.fc1", "kohya"):
        ("l", "transformer.encoder.layers.1.mlp.fc1"),
    ("lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k", "kohya"):
        ("unet", "input_blocks.3.1.transformer_blocks.0.attn2.to_k"),
    ("lora_unet_down_blocks_1_attentions_0_proj_in", "kohya"): ("unet", "input_blocks.3.1.proj_in"),
    ("lora_unet_add_embedding_linear_1", "kohya"): ("unet", "label_emb.0.0"),
}


def test_sdxl_encoders_get_their_own_keys(models, tmp_path):
    ck = models["sdxl"]
    modules = {"unet": ck.unet, **ck.text}
    gen = torch.Generator().manual_seed(8)
    sd, parts = {}, {}
    for (name, fmt), (part, path) in SDXL_TARGETS.items():
        up, down = low_rank(gen, modules[part].get_parameter(path + ".weight").shape)
        sd |= lora_entry(name, fmt, up, down)
        parts[part, path + ".weight"] = (up, down, ALPHA / RANK if FORMATS[fmt][2] else 1.0)
    before = {name: run_text(enc) for name, enc in ck.text.items()}
    unet, text, unmatched = load_lora_into(save(tmp_path, sd), "sdxl", ck.unet, ck.text, 0.5, STRENGTH)
    assert unmatched == []
    new = {"unet": unet, **text}
    for (part, param), (up, down, scale) in parts.items():
        strength = 0.5 if part == "unet" else STRENGTH
        assert torch.equal(new[part].get_parameter(param), expected(modules[part].get_parameter(param), up, down,
                                                                    strength, scale)), (part, param)
    for part in modules:
        assert_shares_unpatched(modules[part], new[part], {p for q, p in parts if q == part})
    for name, enc in ck.text.items():
        assert torch.equal(run_text(enc), before[name]) and not torch.allclose(run_text(text[name]), before[name])
    assert not torch.allclose(run_unet(unet, "sdxl"), run_unet(ck.unet, "sdxl"))
    assert_base_untouched(ck)


# -- what does not fit ------------------------------------------------------------------------
def test_unmatched_keys_are_reported(models, tmp_path):
    ck = models["sdxl"]
    gen = torch.Generator().manual_seed(9)
    q1 = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    q2 = q1.replace("lora_te1_", "lora_te2_")
    good = lora_entry(q2, "kohya", randn(gen, 16, 2), randn(gen, 2, 16))
    dora = lora_entry(q1, "kohya", randn(gen, 16, 2), randn(gen, 2, 16)) | {q1 + ".dora_scale": randn(gen, 16, 1)}
    stray = {
        "lora_unet_no_such_block_attn1_to_q.lora_up.weight": randn(gen, 4, 2),
        "lora_te3_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": randn(gen, 4, 2),
        "lora_unet_input_blocks_1_1_proj_in.hada_w1_a": randn(gen, 4, 2),  # LoHa: not supported
        "lora_unet_input_blocks_1_1_proj_out.alpha": torch.tensor(1.0),  # an alpha with no pair
        "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.diff_b": randn(gen, 32),  # to_q has no bias
    }
    sd = read_lora(save(tmp_path, good | dora | stray))
    unet_patches, text_patches, unmatched = lora_patches(sd, "sdxl", ck.unet, ck.text)
    assert unmatched == sorted(stray)  # DoRA is applied since issue 16
    assert unet_patches == {}
    assert list(text_patches["l"]) == list(text_patches["g"]) == ["transformer.encoder.layers.0.self_attn.q_proj.weight"]
    # without a UNet, its keys are unmatched too
    unet_only = read_lora(save(tmp_path, attention_lora(ck.unet, 1), "u.safetensors"))
    assert lora_patches(unet_only, "sdxl", None, ck.text)[2] == sorted(unet_only)


def test_misfits_are_refused_together(models, tmp_path):
    ck = models["sd15"]
    gen = torch.Generator().manual_seed(10)
    sd = (lora_entry("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q", "kohya", randn(gen, 48, 2),
                     randn(gen, 2, 32))  # an SDXL-width LoRA, say
          | lora_entry("lora_unet_middle_block_1_proj_out", "kohya", randn(gen, 64, 2), randn(gen, 2, 64))
          | lora_entry("unet.mid_block.attentions.0.proj_out", "peft", randn(gen, 64, 2), randn(gen, 2, 64))
          | {"lora_te_text_model_encoder_layers_0_mlp_fc1.diff": randn(gen, 3, 3)})
    with pytest.raises(LoraError) as err:
        lora_patches(sd, "sd15", ck.unet, ck.text, source="x.safetensors")
    message = str(err.value)
    assert "x.safetensors" in message and "attn1_to_q" in message and "(32, 32)" in message
    assert "both patch unet middle_block.1.proj_out.weight" in message and "layers_0_mlp_fc1" in message
    with pytest.raises(LoraError, match="unknown family"):
        lora_patches(sd, "sd9", ck.unet, ck.text)
    with pytest.raises(LoraError, match="does not have"):
        apply_lora(ck.text["l"], {"nope.weight": Diff(torch.zeros(1))})


class Payload:
    """Something a weights-only unpickler will not build."""


def test_pickles(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"lora_unet_conv_in.diff": torch.ones(2)}, plain)
    assert torch.equal(read_lora(plain)["lora_unet_conv_in.diff"], torch.ones(2))
    evil = tmp_path / "evil.pt"
    torch.save({"lora_unet_conv_in.diff": torch.ones(2), "extra": Payload()}, evil)
    with pytest.raises(LoraError, match="evil.pt: refused"):
        read_lora(evil)
    with pytest.raises(LoraError, match="no such file"):
        read_lora(tmp_path / "missing.safetensors")


# -- the diffusers names at full size ---------------------------------------------------------
KNOWN = {  # family: (our module path, diffusers path), from the published SD1.5 and SDXL layouts
    "sd15": [("input_blocks.4.1.transformer_blocks.0.attn2.to_k",
              "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"),
             ("input_blocks.9.0.op", "down_blocks.2.downsamplers.0.conv"),
             ("input_blocks.11.0.out_layers.3", "down_blocks.3.resnets.1.conv2"),
             ("middle_block.2.emb_layers.1", "mid_block.resnets.1.time_emb_proj"),
             ("output_blocks.2.1.conv", "up_blocks.0.upsamplers.0.conv"),
             ("output_blocks.5.2.conv", "up_blocks.1.upsamplers.0.conv"),
             ("output_blocks.5.1.proj_out", "up_blocks.1.attentions.2.proj_out"),
             ("output_blocks.11.0.skip_connection", "up_blocks.3.resnets.2.conv_shortcut"),
             ("out.2", "conv_out")],
    "sdxl": [("input_blocks.8.1.transformer_blocks.9.attn1.to_out.0",
              "down_blocks.2.attentions.1.transformer_blocks.9.attn1.to_out.0"),
             ("input_blocks.6.0.op", "down_blocks.1.downsamplers.0.conv"),
             ("output_blocks.2.2.conv", "up_blocks.0.upsamplers.0.conv"),
             ("output_blocks.3.1.transformer_blocks.1.ff.net.0.proj",
              "up_blocks.1.attentions.0.transformer_blocks.1.ff.net.0.proj"),
             ("output_blocks.8.0.in_layers.2", "up_blocks.2.resnets.2.conv1"),
             ("label_emb.0.2", "add_embedding.linear_2")],
}


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_diffusers_names_full_size(family):
    with torch.device("meta"):
        unet = UNetModel(getattr(UNetConfig, family)())
    names = diffusers_unet_names(unet)
    for ours, theirs in KNOWN[family]:
        assert names[ours] == theirs
    weights = [n[: -len(".weight")] for n, _ in unet.named_parameters() if n.endswith(".weight")]
    assert sorted(names) == sorted(weights) and len(set(names.values())) == len(names)
