"""ComfyUI's comfy.lora, comfy.controlnet, comfy.clip_vision, chainner_models, nodes_perpneg,
nodes_mask.composite, sd1_clip's weight helpers and ldm attention, used as real packs use
them (tests/fixtures/packs/modules2_pack): each result is compared by value with what
latentgraph's own nodes give for the same files and settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentgraph import comfy_compat
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import load_placed
from latentgraph.models.lora_make import make_lora, save_lora
from latentgraph.models.make import make_clip_vision
from latentgraph.models.management import Placement
from latentgraph.models.upscale import make_tiny_upscale_state_dict
from latentgraph.nodes import create_registry, create_services
from latentgraph.plugins import load_plugins
from conftest import FIXTURES

CKPT = "latentgraph-shapes.safetensors"
PACK = Path(__file__).parent / "fixtures" / "packs" / "modules2_pack"
CONTROLNET = FIXTURES / "comfy_reference" / "controlnet" / "tiny_sd15_controlnet.safetensors"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("modules2")
    shutil.copytree(PACK, root / "custom_nodes" / "modules2_pack")
    models = root / "models"
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models_dir=models, device="cpu")
    ck = load_placed(env.find_model("checkpoints", CKPT), Placement())
    save_lora(make_lora(ck.unet, [ck.text["l"]], "lora", seed=3), models / "loras" / "demo.safetensors", "lora")
    (models / "controlnet").mkdir(parents=True)
    shutil.copy(CONTROLNET, models / "controlnet" / "tiny.safetensors")
    make_clip_vision(models / "clip_vision" / "tiny.safetensors", "vit-l", "tiny", seed=0)
    (models / "upscale_models").mkdir(parents=True)
    save_file(make_tiny_upscale_state_dict("esrgan", 0), str(models / "upscale_models" / "tiny.safetensors"))
    registry = create_registry()
    (info,) = load_plugins(registry, [root / "custom_nodes"], entry_points=False, env=env)
    assert (info.status, info.error, info.missing) == ("loaded", None, [])
    return env, registry, Executor(registry, env, services=create_services(env))


def _run(site, nodes: dict):
    _, _, executor = site
    wf = Workflow.from_api({nid: {"class_type": c, "inputs": i} for nid, (c, i) in nodes.items()})
    run = executor.run(wf, targets=list(nodes))
    return {nid: tuple(run.get(nid, i) for i in range(len(run.values[nid]))) for nid in nodes}


LOADER = {"ck": ("CheckpointLoaderSimple", {"ckpt_name": CKPT}),
          "lat": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1}),
          "img": ("EmptyImage", {"width": 64, "height": 48, "batch_size": 1, "color": 0x3080C0})}


def _encode(clip):
    return ("CLIPTextEncode", {"clip": clip, "text": "a red circle"})


def _ksampler(model, positive):
    return ("KSampler", {"model": model, "seed": 7, "steps": 3, "cfg": 4.0, "sampler_name": "euler",
                         "scheduler": "normal", "positive": positive, "negative": positive,
                         "latent_image": ["lat", 0], "denoise": 1.0})


def _lbw(weights=(1.0, 1.0, 1.0), strength_model=0.8, strength_clip=0.6):
    i, m, o = weights
    return ("M2LoraBlockWeight", {"model": ["ck", 0], "clip": ["ck", 1], "lora_name": "demo.safetensors",
                                  "strength_model": strength_model, "strength_clip": strength_clip,
                                  "input_w": i, "middle_w": m, "output_w": o})


def test_lora_block_weight_at_full_weight_equals_lora_loader(site):
    result = _run(site, {**LOADER, "lbw": _lbw(), "ll": ("LoraLoader", {
        "model": ["ck", 0], "clip": ["ck", 1], "lora_name": "demo.safetensors", "strength_model": 0.8,
        "strength_clip": 0.6}),
        "p_pack": _encode(["lbw", 1]), "p_ours": _encode(["ll", 1]), "p_plain": _encode(["ck", 1]),
        "k_pack": _ksampler(["lbw", 0], ["p_pack", 0]), "k_ours": _ksampler(["ll", 0], ["p_ours", 0]),
        "k_plain": _ksampler(["ck", 0], ["p_plain", 0])})
    counts = json.loads(result["lbw"][2])
    assert counts["unet"] > 0 and counts["clip"] > 0
    assert torch.allclose(result["p_pack"][0][0][0], result["p_ours"][0][0][0], atol=1e-6)
    assert not torch.allclose(result["p_pack"][0][0][0], result["p_plain"][0][0][0], atol=1e-4)
    pack, ours = result["k_pack"][0]["samples"], result["k_ours"][0]["samples"]
    assert torch.allclose(pack, ours, atol=1e-5)
    assert not torch.allclose(pack, result["k_plain"][0]["samples"], atol=1e-3)


def test_lora_block_weight_with_blocks_off_is_not_the_whole_lora(site):
    result = _run(site, {**LOADER, "full": _lbw(), "none": _lbw((0.0, 0.0, 0.0)),
                         "p": _encode(["ck", 1]), "k_full": _ksampler(["full", 0], ["p", 0]),
                         "k_none": _ksampler(["none", 0], ["p", 0]), "k_plain": _ksampler(["ck", 0], ["p", 0])})
    full, none, plain = (result[k][0]["samples"] for k in ("k_full", "k_none", "k_plain"))
    assert not torch.allclose(full, none, atol=1e-3)
    # with every block at 0 only the patches outside the blocks remain (time embedding, in/out convs)
    assert not torch.allclose(none, plain, atol=1e-6)


def test_lora_keys_name_comfyui_weight_keys(site):
    env, _, _ = site
    sd = comfy_compat.import_module("comfy.sd")
    lora = comfy_compat.import_module("comfy.lora")
    comfy_compat.bind(env=env)
    model, clip, _, _ = sd.load_checkpoint_guess_config(str(env.find_model("checkpoints", CKPT)))
    unet = lora.model_lora_keys_unet(model.model)
    assert unet["lora_unet_input_blocks_1_0_in_layers_2"] == "diffusion_model.input_blocks.1.0.in_layers.2.weight"
    keys = lora.model_lora_keys_clip(clip, {})
    assert keys["lora_te_text_model_encoder_layers_0_mlp_fc1"] == \
        "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
    assert set(unet.values()) <= {k for k in model.get_key_patches()}
    assert lora.model_lora_keys_clip(clip.cond_stage_model, {}) == keys  # how ComfyUI's callers pass it
    with pytest.raises(TypeError, match="expected a CLIP value or its cond_stage_model"):
        lora.model_lora_keys_clip(object())


def test_load_controlnet_is_controlnet_loader_and_the_stack_applies_as_apply_advanced(site):
    result = _run(site, {**LOADER, "p": _encode(["ck", 1]),
                         "stack": ("M2ControlNetStack", {"conditioning": ["p", 0], "image": ["img", 0],
                                                         "control_net_name": "tiny.safetensors", "strength": 0.7,
                                                         "start": 0.1, "end": 0.9}),
                         "cn": ("ControlNetLoader", {"control_net_name": "tiny.safetensors"}),
                         "adv": ("ControlNetApplyAdvanced", {"positive": ["p", 0], "negative": ["p", 0],
                                                             "control_net": ["cn", 0], "image": ["img", 0],
                                                             "strength": 0.7, "start_percent": 0.1,
                                                             "end_percent": 0.9})})
    kinds = json.loads(result["stack"][1])
    assert kinds == {"base": True, "controlnet": True, "t2i": False, "lora": False, "copy_untouched": True}
    pack, ours = result["stack"][0][0][1]["control"], result["adv"][0][0][1]["control"]
    assert (pack.strength, pack.percent_range) == (ours.strength, ours.percent_range) == (0.7, (0.1, 0.9))
    assert torch.equal(pack.hint, ours.hint)
    assert pack.net is ours.net  # the same cached network ControlNetLoader loaded


def test_clip_vision_load_and_encode_equal_the_nodes(site):
    result = _run(site, {**LOADER, "pack": ("M2ClipVisionEncode", {"clip_name": "tiny.safetensors",
                                                                   "image": ["img", 0]}),
                         "cv": ("CLIPVisionLoader", {"clip_name": "tiny.safetensors"}),
                         "enc": ("CLIPVisionEncode", {"clip_vision": ["cv", 0], "image": ["img", 0],
                                                      "crop": "center"})})
    encoded, own, info = result["pack"]
    ours = result["enc"][0]
    for field in ("image_embeds", "last_hidden_state", "penultimate_hidden_states"):
        assert torch.equal(encoded[field], getattr(ours, field))
    assert torch.equal(own["image_embeds"], ours.image_embeds * 2)
    assert json.loads(info) == {"output": True, "model": True, "pixels": [1, 3, 224, 224]}


def test_chainner_load_state_dict_upscales_as_upscale_model_loader(site):
    result = _run(site, {**LOADER, "old": ("M2UpscaleModelLoader", {"model_name": "tiny.safetensors"}),
                         "new": ("UpscaleModelLoader", {"model_name": "tiny.safetensors"}),
                         "u_old": ("ImageUpscaleWithModel", {"upscale_model": ["old", 0], "image": ["img", 0]}),
                         "u_new": ("ImageUpscaleWithModel", {"upscale_model": ["new", 0], "image": ["img", 0]})})
    assert result["u_old"][0].shape == result["u_new"][0].shape
    assert torch.equal(result["u_old"][0], result["u_new"][0])


def test_a_guider_perpneg_subclass_samples_as_perpneg_guider(site):
    custom = {"noise": ("RandomNoise", {"noise_seed": 5}), "sampler": ("KSamplerSelect", {"sampler_name": "euler"}),
              "sigmas": ("BasicScheduler", {"model": ["ck", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}),
              "pos": _encode(["ck", 1]), "neg": ("CLIPTextEncode", {"clip": ["ck", 1], "text": "blue"}),
              "empty": ("CLIPTextEncode", {"clip": ["ck", 1], "text": ""})}
    conds = {"model": ["ck", 0], "positive": ["pos", 0], "negative": ["neg", 0], "empty_conditioning": ["empty", 0],
             "cfg": 5.0, "neg_scale": 0.7}

    def sample(guider):
        return ("SamplerCustomAdvanced", {"noise": ["noise", 0], "guider": [guider, 0], "sampler": ["sampler", 0],
                                          "sigmas": ["sigmas", 0], "latent_image": ["lat", 0]})

    result = _run(site, {**LOADER, **custom, "g_pack": ("M2PerpNegGuider", conds), "g_ours": ("PerpNegGuider", conds),
                         "s_pack": sample("g_pack"), "s_ours": sample("g_ours")})
    assert torch.equal(result["s_pack"][0]["samples"], result["s_ours"][0]["samples"])


def test_composite_pastes_channels_first_in_place_as_image_composite_masked():
    from latentgraph.nodes.image import composite as ours

    nodes_mask = comfy_compat.import_module("comfy_extras.nodes_mask")
    g = torch.Generator().manual_seed(0)
    dest, src = torch.rand(2, 3, 20, 24, generator=g), torch.rand(1, 3, 10, 8, generator=g)
    mask = torch.rand(1, 5, 4, generator=g)
    expected = ours(dest.movedim(1, -1), src.movedim(1, -1), 6, 13, mask, False).movedim(-1, 1)
    target = dest.clone()
    out = nodes_mask.composite(target, src, 6, 13, mask, 1)
    assert out is target and torch.allclose(out, expected, atol=1e-6)
    # a latent placed in pixels (multiplier 8), partly past the right and bottom edges: the part inside
    lat = torch.zeros(1, 4, 8, 8)
    nodes_mask.composite(lat, torch.ones(1, 4, 4, 4), 48, 40, None, 8)
    assert lat[0, 0].sum() == 3 * 2 and torch.equal(lat[0, :, 5:8, 6:8], torch.ones(4, 3, 2))
    assert nodes_mask.ImageCompositeMasked.__name__ == "ImageCompositeMasked"  # its node classes still come


def test_sd1_clip_weights_and_escapes_follow_comfyui():
    sd1 = comfy_compat.import_module("comfy.sd1_clip")
    text = sd1.escape_important("a \\(b\\) (c:1.5) ((d)) (e:x)")
    parts = [(sd1.unescape_important(t), round(w, 6)) for t, w in sd1.token_weights(text, 1.0)]
    assert parts == [("a (b) ", 1.0), ("c", 1.5), (" ", 1.0), ("d", 1.21), (" ", 1.0), ("e:x", 1.1)]
    assert sd1.token_weights("(x)", 2.0) == [("x", 2.2)]


def test_attention_functions_are_softmax_attention():
    attention = comfy_compat.import_module("comfy.ldm.modules.attention")
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 5, 8, generator=g) for _ in range(3))
    heads = 2
    qh, kh, vh = (t.view(2, -1, heads, 4).transpose(1, 2) for t in (q, k, v))
    expected = (torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, -1) @ vh).transpose(1, 2).reshape(2, 5, 8)
    assert torch.allclose(attention.optimized_attention(q, k, v, heads), expected, atol=1e-6)
    split = attention.optimized_attention(qh, kh, vh, heads, skip_reshape=True, skip_output_reshape=True)
    assert torch.allclose(split.transpose(1, 2).reshape(2, 5, 8), expected, atol=1e-6)
    masked = attention.optimized_attention_masked(q, k, v, heads, mask=torch.zeros(5, 5))
    assert torch.allclose(masked, expected, atol=1e-6)


def test_comfyui_internal_classes_import_but_are_missing_when_made(site):
    env, _, _ = site
    sdxl_clip = comfy_compat.import_module("comfy.sdxl_clip")
    sd = comfy_compat.import_module("comfy.sd")
    controlnet = comfy_compat.import_module("comfy.controlnet")
    comfy_compat.bind(env=env)
    _, clip, _, _ = sd.load_checkpoint_guess_config(str(env.find_model("checkpoints", CKPT)))
    assert not isinstance(clip, (sdxl_clip.SDXLClipModel, sdxl_clip.SDXLTokenizer))
    with pytest.raises(AttributeError, match="comfy.sdxl_clip' has no attribute 'SDXLClipModel'"):
        sdxl_clip.SDXLClipModel()
    with pytest.raises(AttributeError, match="ControlNet.__init__"):
        controlnet.ControlNet()
    with pytest.raises(AttributeError, match="does not provide it"):
        controlnet.load_t2i_adapter  # noqa: B018


# -- comfy.ops, comfy.float, tiled_scale_multidim, model configs, previewers ------------------------
def test_ops_layers_skip_init_and_manual_cast_computes_in_the_inputs_dtype():
    ops = comfy_compat.import_module("comfy.ops")
    torch.manual_seed(0)
    plain = torch.nn.Linear(6, 3)
    stored = ops.manual_cast.Linear(6, 3, dtype=torch.bfloat16)
    stored.load_state_dict(plain.state_dict())
    x = torch.randn(2, 6)
    expected = torch.nn.functional.linear(x, plain.weight.bfloat16().float(), plain.bias.bfloat16().float())
    out = stored(x)
    assert out.dtype == torch.float32 and torch.equal(out, expected)
    # disable_weight_init computes as torch does, until a weight function asks for the cast
    conv = ops.disable_weight_init.conv_nd(2, 3, 4, 3)
    ref = torch.nn.Conv2d(3, 4, 3)
    conv.load_state_dict(ref.state_dict())
    img = torch.randn(1, 3, 8, 8)
    assert torch.equal(conv(img), ref(img)) and not conv.comfy_cast_weights
    conv.weight_function = [lambda w: w * 0]
    assert torch.equal(conv(img), ref.bias.view(1, 4, 1, 1).expand(1, 4, 6, 6))
    assert ops.pick_operations(torch.float16, torch.float32) is ops.manual_cast
    assert ops.pick_operations(torch.float32, None) is ops.disable_weight_init
    # a pack's own layer over manual_cast's, as GGUF's quantised layers are
    class Scaled(ops.manual_cast.Linear):
        def forward_comfy_cast_weights(self, input):
            weight, bias = ops.cast_bias_weight(self, input)
            return torch.nn.functional.linear(input, weight * 2, bias)

    mine = Scaled(6, 3)
    mine.load_state_dict(plain.state_dict())
    assert torch.allclose(mine(x), torch.nn.functional.linear(x, plain.weight * 2, plain.bias))


def test_stochastic_rounding_is_seeded_and_lands_on_fp8_neighbours():
    float_ = comfy_compat.import_module("comfy.float")
    value = torch.full((64, 64), 0.30)  # between the e4m3 values 0.28125 and 0.3125
    a = float_.stochastic_rounding(value, torch.float8_e4m3fn, seed=3)
    b = float_.stochastic_rounding(value, torch.float8_e4m3fn, seed=3)
    assert a.dtype == torch.float8_e4m3fn and torch.equal(a.float(), b.float())
    assert set(a.float().unique().tolist()) == {0.28125, 0.3125}
    # unbiased: the mean lands near the value (0.30 is 60% of the way up)
    assert abs(a.float().mean().item() - 0.30) < 0.003
    assert torch.equal(float_.stochastic_rounding(value, torch.float16), value.half())


def test_tiled_scale_multidim_reassembles_a_tiled_upscale_exactly():
    utils = comfy_compat.import_module("comfy.utils")
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 6, 20, 18, generator=g)  # (B, C, T, H, W)

    def up(x):  # nearest 2x in H and W, frames kept
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    out = utils.tiled_scale_multidim(video, up, tile=(4, 8, 8), overlap=(1, 2, 2), upscale_amount=(1, 2, 2),
                                     out_channels=3)
    assert out.shape == (2, 3, 6, 40, 36) and torch.allclose(out, up(video), atol=1e-6)
    whole = utils.tiled_scale_multidim(video[:1, :, :2, :4, :4], up, tile=(4, 8, 8), upscale_amount=(1, 2, 2))
    assert torch.equal(whole, up(video[:1, :, :2, :4, :4]))


def test_model_configs_and_families_answer_isinstance_for_our_values(site):
    env, _, _ = site
    sd = comfy_compat.import_module("comfy.sd")
    supported = comfy_compat.import_module("comfy.supported_models")
    base = comfy_compat.import_module("comfy.supported_models_base")
    model_base = comfy_compat.import_module("comfy.model_base")
    comfy_compat.bind(env=env)
    model, _, _, _ = sd.load_checkpoint_guess_config(str(env.find_model("checkpoints", CKPT)))
    config = model.model.model_config
    assert isinstance(config, base.BASE) and isinstance(config, supported.SD15)
    assert not isinstance(config, (supported.SDXL, supported.SD20, supported.Flux))
    assert issubclass(supported.SSD1B, supported.SDXL) and supported.SD15 in supported.models
    assert not isinstance(model.model, (model_base.SVD_img2vid, model_base.Flux))
    assert issubclass(model_base.Chroma, model_base.Flux) and issubclass(model_base.SVD_img2vid, model_base.BaseModel)
    with pytest.raises(AttributeError, match="SVD_img2vid"):
        model_base.SVD_img2vid(config)


def test_latent_previewer_subclass_and_names_a_pack_sets_itself():
    from latentgraph.comfy_compat import runtime

    preview = comfy_compat.import_module("latent_preview")
    nodes = comfy_compat.import_module("nodes")

    class Mine(preview.LatentPreviewer):
        def decode_latent_to_preview(self, x0):
            return x0.shape

    assert Mine().decode_latent_to_preview_image("JPEG", torch.zeros(1, 4, 8, 8)) == \
        ("JPEG", torch.Size([1, 4, 8, 8]), 512)
    with runtime.loading("probe_pack"):
        assert not hasattr(nodes, "M2PackFormats")
        nodes.M2PackFormats = {}
        assert not hasattr(nodes, "M2NeverSet")
    try:
        assert runtime.missing_names("probe_pack") == ["nodes.M2NeverSet"]
    finally:
        del nodes.M2PackFormats
        runtime.forget("probe_pack")


def test_a_node_with_no_outputs_and_no_function_registers_and_never_runs(site):
    """Efficiency's "XY Entry Info" kind: registered as ComfyUI registers it (shown in
    /object_info), skipped by a workflow that holds it, refused by name when asked to run."""
    from latentgraph.graph.errors import LatentgraphError

    _, registry, executor = site
    info = registry["M2EntryInfo"].object_info()
    assert (info["output"], info["output_node"], list(info["input"]["required"])) == ([], False, ["notes"])
    wf = Workflow.from_api({"info": {"class_type": "M2EntryInfo", "inputs": {"notes": "x"}},
                            "img": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1,
                                                                           "color": 0}},
                            "save": {"class_type": "PreviewImage", "inputs": {"images": ["img", 0]}}})
    run = executor.run(wf)
    assert "save" in run.values and "info" not in run.values
    with pytest.raises(LatentgraphError, match="never run"):
        executor.run(wf, targets=["info"])


def test_unclip_loader_gives_packs_none_for_a_checkpoint_without_an_image_encoder(site):
    """As ComfyUI (Inspire's StableCascade_CheckpointLoader passes it on): None, where
    latentgraph's own unCLIPCheckpointLoader node gives a value naming the file."""
    env, _, _ = site
    comfy_compat.bind(env=env)
    nodes = comfy_compat.import_module("nodes")
    model, clip, vae, vision = nodes.unCLIPCheckpointLoader().load_checkpoint(ckpt_name=CKPT)
    assert vision is None and model is not None and clip is not None and vae is not None
    (ours,) = _run(site, {"u": ("unCLIPCheckpointLoader", {"ckpt_name": CKPT})}).values()
    assert type(ours[3]).__name__ == "MissingClipVision"
