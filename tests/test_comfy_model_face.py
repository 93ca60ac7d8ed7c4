"""ComfyUI's MODEL/CLIP/VAE faces (models/comfy_faces.py) and the tree's comfy.model_patcher,
model_base, model_sampling, latent_formats and sd, used as packs use them: a pack written here
clones the shipped demo model and patches a weight, replaces its model_sampling, reads its
schedule, encodes through tokenize + encode_from_tokens, decodes through vae.decode, merges by
get_key_patches, loads a checkpoint and a LoRA through comfy.sd; every result is compared by
value with latentgraph's own nodes or with numbers from ComfyUI's formulas. The pack is
tests/fixtures/packs/model_face_pack."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from latentgraph import comfy_compat
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import load_placed
from latentgraph.models.lora_make import make_lora, save_lora
from latentgraph.models.make_split import make_text_encoder, make_unet
from latentgraph.models.management import Placement
from latentgraph.models.weight_patches import PatchError
from latentgraph.nodes import create_registry, create_services
from latentgraph.plugins import load_plugins

CKPT = "latentgraph-shapes.safetensors"
BIAS = "diffusion_model.out.2.bias"  # the UNet's last conv: a diff here shifts eps by the diff
NORM = "clip_l.transformer.text_model.final_layer_norm.bias"  # SD1 reads the final norm: cond shifts by it

PACK = Path(__file__).parent / "fixtures" / "packs" / "model_face_pack"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("faces")
    shutil.copytree(PACK, root / "custom_nodes" / "face_pack")
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models_dir=root / "models", device="cpu")
    ck = load_placed(env.find_model("checkpoints", CKPT), Placement())
    save_lora(make_lora(ck.unet, [ck.text["l"]], "lora", seed=3), root / "models" / "loras" / "demo.safetensors",
              "lora")
    make_unet(root / "models" / "diffusion_models" / "tiny_unet.safetensors", "sd15", seed=1)
    for encoder in ("l", "g"):
        make_text_encoder(root / "models" / "text_encoders" / f"tiny_{encoder}.safetensors", "sdxl", encoder, seed=2)
    registry = create_registry()
    (info,) = load_plugins(registry, [root / "custom_nodes"], entry_points=False, env=env)
    assert (info.status, info.error, info.missing) == ("loaded", None, [])
    return env, registry, Executor(registry, env, services=create_services(env))


def _run(site, nodes: dict, fresh: bool = False):
    """Run ``nodes`` on the module's executor (its model cache and results shared between
    tests), or on a new one."""
    env, registry, executor = site
    if fresh:
        executor = Executor(registry, env, services=create_services(env))
    wf = Workflow.from_api({nid: {"class_type": c, "inputs": i} for nid, (c, i) in nodes.items()})
    return executor.run(wf, targets=list(nodes))


LOADER = {"ck": ("CheckpointLoaderSimple", {"ckpt_name": CKPT})}


def _ksampler(model, steps=3):
    return ("KSampler", {"model": model, "seed": 7, "steps": steps, "cfg": 4.0, "sampler_name": "euler",
                         "scheduler": "normal", "positive": ["pos", 0], "negative": ["pos", 0],
                         "latent_image": ["lat", 0], "denoise": 1.0})


SAMPLE = {"pos": ("CLIPTextEncode", {"clip": ["ck", 1], "text": "a red circle"}),
          "lat": ("EmptyLatentImage", {"width": 64, "height": 64, "batch_size": 1})}


def test_add_patches_changes_the_weights_sampling_uses_and_never_the_input(site):
    result = _run(site, {**LOADER, **SAMPLE, "p": ("FacePatchOutBias", {"model": ["ck", 0], "strength": 2.0}),
                         "k_patched": _ksampler(["p", 0]), "k_plain": _ksampler(["ck", 0])})
    base, patched = result.get("ck", 0), result.get("p", 0)
    assert json.loads(result.get("p", 1)) == [BIAS]  # the unknown key is ignored, as in ComfyUI
    old, new = base.unet.get_parameter("out.2.bias"), patched.unet.get_parameter("out.2.bias")
    assert torch.equal(new, old + 0.5) and patched.unet is not base.unet
    # copy-on-write: every other tensor is the base's own, and the base is as loaded
    shared = [n for n, p in patched.unet.named_parameters() if p is base.unet.get_parameter(n)]
    assert len(shared) == len(list(base.unet.parameters())) - 1
    fresh = load_placed(site[0].find_model("checkpoints", CKPT), Placement())
    assert torch.equal(old, fresh.unet.get_parameter("out.2.bias"))
    # eps + 0.5 gives denoised - 0.5 * sigma, through ComfyUI's model.model.apply_model
    x, sigma = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([2.0])
    cond = result.get("pos")[0][0]
    d_old = base.model.apply_model(x, sigma, c_crossattn=cond)
    d_new = patched.model.apply_model(x, sigma, c_crossattn=cond)
    assert torch.allclose(d_new - d_old, torch.full_like(x, -1.0), atol=1e-5)
    a, b = result.get("k_patched")["samples"], result.get("k_plain")["samples"]
    assert a.shape == b.shape == (1, 4, 8, 8) and (a - b).abs().mean() > 0.1
    alone = _run(site, {**LOADER, **SAMPLE, "k": _ksampler(["ck", 0])}, fresh=True).get("k")["samples"]
    assert torch.equal(alone, b)


def test_model_sampling_and_model_base_read_as_in_comfyui(site):
    got = json.loads(_run(site, {**LOADER, "r": ("FaceReadSampling", {"model": ["ck", 0]})}).get("r"))
    # SD1.5's discrete schedule: ComfyUI's ModelSamplingDiscrete gives these (linear betas 0.00085..0.012)
    assert got["sigma_max"] == pytest.approx(14.614641189575195, rel=1e-7)
    assert got["sigma_min"] == pytest.approx(0.029167158529162407, rel=1e-6)
    assert got["p"] == [999999999.9, pytest.approx(1.6155803203582764, rel=1e-6),
                        pytest.approx(0.6951495409011841, rel=1e-6), 0.0]
    assert got["timestep_of_max"] == 999.0 and got["sigma_999"] == pytest.approx(14.614641189575195, rel=1e-7)
    assert {k: got[k] for k in ("model_type", "scale_factor", "latent_channels", "unet", "in_channels",
                                "load_device", "dtype")} == {
        "model_type": "EPS", "scale_factor": 0.18215, "latent_channels": 4, "unet": "UNetModel", "in_channels": 4,
        "load_device": "cpu", "dtype": "torch.float32"}
    assert {k: got[k] for k in ("patcher", "base", "sdxl", "eps", "v", "discrete", "sd15", "eps_type")} == {
        "patcher": True, "base": True, "sdxl": False, "eps": True, "v": False, "discrete": True, "sd15": True,
        "eps_type": True}


def test_a_replaced_model_sampling_changes_the_sigmas_sampling_uses(site):
    sched = {"scheduler": "normal", "steps": 4, "denoise": 1.0}
    result = _run(site, {**LOADER, **SAMPLE, "z": ("FaceZsnr", {"model": ["ck", 0]}),
                         "s_z": ("BasicScheduler", {"model": ["z", 0], **sched}),
                         "s": ("BasicScheduler", {"model": ["ck", 0], **sched}),
                         "k_z": _ksampler(["z", 0]), "k": _ksampler(["ck", 0])})
    # zero terminal SNR pins the last alpha_bar to 4.8973451890853435e-08: sigma_max ~ 4518.85
    assert float(result.get("s_z")[0]) == pytest.approx(((1 - 4.8973451890853435e-08) / 4.8973451890853435e-08) ** 0.5,
                                                        rel=1e-5)
    assert float(result.get("s")[0]) == pytest.approx(14.614641189575195, rel=1e-6)
    assert type(result.get("z", 0).schedule).__name__ == "ModelSamplingAdvanced"
    assert "model_sampling" in result.get("z", 0).object_patches and not result.get("ck", 0).object_patches
    z, plain = result.get("k_z")["samples"], result.get("k")["samples"]
    assert bool(torch.isfinite(z).all()) and (z - plain).abs().mean() > 0.05


def test_an_object_patch_inside_diffusion_model(site):
    result = _run(site, {**LOADER, **SAMPLE, "zero": ("FaceZeroOut", {"model": ["ck", 0]})})
    base, zeroed = result.get("ck", 0), result.get("zero", 0)
    x, cond = torch.randn(2, 4, 8, 8), result.get("pos")[0][0]
    # eps is 0 everywhere: the denoised latent is the input itself
    assert torch.equal(zeroed.model.apply_model(x, torch.tensor([3.0, 1.0]), c_crossattn=cond), x)
    assert not torch.equal(base.model.apply_model(x, torch.tensor([3.0, 1.0]), c_crossattn=cond), x)
    assert type(base.unet.out[2]).__name__ == "Conv2d" and float(base.unet.out[2].weight.abs().sum()) > 0
    assert zeroed.unet.input_blocks is base.unet.input_blocks  # only the path to the change is new


def test_tokenize_and_encode_from_tokens_equal_clip_text_encode(site):
    result = _run(site, {**LOADER, "e": ("FaceEncode", {"clip": ["ck", 1], "text": "a (blue:1.2) square"}),
                         "c": ("CLIPTextEncode", {"clip": ["ck", 1], "text": "a (blue:1.2) square"})})
    (ours,), (mine,), (as_dict,) = result.get("c"), result.get("e", 0), result.get("e", 1)
    assert torch.equal(mine[0], ours[0]) and torch.equal(mine[1]["pooled_output"], ours[1]["pooled_output"])
    assert torch.equal(as_dict[0], ours[0]) and list(as_dict[1]) == ["pooled_output"]
    clip = result.get("ck", 1)
    assert torch.equal(clip.encode_from_tokens(clip.tokenize("a (blue:1.2) square")), ours[0])
    words = clip.tokenize("red (circle:1.1)", return_word_ids=True)["l"][0]
    # ComfyUI's word ids: 0 for start/end/padding, then one per weighted segment
    assert [w[1:] for w in words[:4]] == [(1.0, 0), (1.0, 1), (1.1, 2), (1.0, 0)]


def test_clip_add_patches_changes_encoding_and_not_the_input(site):
    result = _run(site, {**LOADER, "n": ("FaceClipNorm", {"clip": ["ck", 1], "strength": 0.5}),
                         "c_new": ("CLIPTextEncode", {"clip": ["n", 0], "text": "a green star"}),
                         "c_old": ("CLIPTextEncode", {"clip": ["ck", 1], "text": "a green star"})})
    assert json.loads(result.get("n", 1)) == [NORM]
    new, old = result.get("c_new")[0][0], result.get("c_old")[0][0]
    assert torch.allclose(new - old, torch.full_like(old, 0.25), atol=1e-5)  # 0.5 diff at strength 0.5
    assert result.get("ck", 1).encoders["l"] is not result.get("n", 0).encoders["l"]
    fresh = load_placed(site[0].find_model("checkpoints", CKPT), Placement())
    assert torch.equal(result.get("ck", 1).encoders["l"].transformer.final_layer_norm.bias,
                       fresh.text["l"].transformer.final_layer_norm.bias)
    # clip.patcher: a ModelPatcher whose model_options a clone copies, and whose patches reach the CLIP
    mp = comfy_compat.import_module("comfy.model_patcher")
    clip = result.get("n", 0).clone()
    assert isinstance(clip.patcher, mp.ModelPatcher) and clip.patcher is clip.patcher
    clip.patcher.model_options["x-pack.defaults"] = {"a": 1}
    twin = clip.clone()
    twin.patcher.model_options["x-pack.defaults"]["a"] = 2
    assert clip.patcher.model_options["x-pack.defaults"] == {"a": 1}
    (norm, _), = twin.patcher.get_key_patches(NORM)[NORM]
    assert twin.patcher.add_patches({NORM: (torch.ones_like(norm),)}) == [NORM]
    assert torch.equal(twin.encoders["l"].transformer.final_layer_norm.bias, norm + 1)
    assert clip.encoders["l"].transformer.final_layer_norm.bias is norm  # the clone's patch stays there


def test_vae_decode_and_encode_equal_the_nodes(site):
    result = _run(site, {**LOADER, **SAMPLE, "k": _ksampler(["ck", 0], steps=2),
                         "de": ("FaceDecodeEncode", {"vae": ["ck", 2], "samples": ["k", 0]}),
                         "d": ("VAEDecode", {"samples": ["k", 0], "vae": ["ck", 2]}),
                         "e": ("VAEEncode", {"pixels": ["d", 0], "vae": ["ck", 2]}),
                         "up": ("LatentUpscale", {"samples": ["k", 0], "upscale_method": "nearest-exact",
                                                  "width": 128, "height": 128, "crop": "disabled"}),
                         "dt": ("VAEDecodeTiled", {"samples": ["up", 0], "vae": ["ck", 2], "tile_size": 64,
                                                   "overlap": 16, "temporal_size": 64, "temporal_overlap": 8})})
    assert torch.equal(result.get("de", 0), result.get("d")) and result.get("d").shape == (1, 64, 64, 3)
    assert torch.equal(result.get("de", 1)["samples"], result.get("e")["samples"])
    assert json.loads(result.get("de", 2)) == {"down": 8, "up": 8, "channels": 4, "is_vae": True,
                                               "module": "AutoencoderKL"}
    vae = result.get("ck", 2)
    latent = result.get("k")["samples"]
    assert torch.equal(vae.decode_tiled(latent, tile_x=8, tile_y=8, overlap=2), result.get("d"))  # one tile
    big = result.get("up")["samples"]  # (1, 4, 16, 16): four tiles of 8 with ComfyUI's units (latent pixels)
    tiled = vae.decode_tiled(big, tile_x=8, overlap=2)
    assert torch.equal(tiled, result.get("dt")) and not torch.equal(tiled, vae.decode(big))
    # comfy.sd.VAE(sd=...) builds the same VAE from its tensors
    sd_module = comfy_compat.import_module("comfy.sd")
    rebuilt = sd_module.VAE(sd=vae.get_sd())
    assert torch.equal(rebuilt.decode(latent), result.get("d"))


def test_merge_by_get_key_patches_equals_model_merge_simple(site):
    result = _run(site, {**LOADER, "p": ("FacePatchOutBias", {"model": ["ck", 0], "strength": 1.0}),
                         "m": ("FaceMerge", {"model1": ["ck", 0], "model2": ["p", 0], "ratio": 0.25}),
                         "ours": ("ModelMergeSimple", {"model1": ["ck", 0], "model2": ["p", 0], "ratio": 0.25})})
    merged, ours, base = result.get("m"), result.get("ours"), result.get("ck", 0)
    mine = dict(merged.unet.named_parameters())
    for name, p in ours.unet.named_parameters():
        assert torch.allclose(mine[name], p, atol=1e-6), name
    # 0.25 * w + 0.75 * (w + 0.25)
    assert torch.allclose(mine["out.2.bias"], base.unet.get_parameter("out.2.bias") + 0.1875, atol=1e-6)


def test_checkpoint_and_lora_through_comfy_sd_equal_the_loader_nodes(site):
    strengths = {"strength_model": 0.8, "strength_clip": 0.6}
    result = _run(site, {"l": ("FaceLoad", {"ckpt_name": CKPT, "lora_name": "demo.safetensors", **strengths}),
                         **LOADER, "ours": ("LoraLoader", {"model": ["ck", 0], "clip": ["ck", 1],
                                                          "lora_name": "demo.safetensors", **strengths})})
    model, clip, vae = (result.get("l", i) for i in range(3))
    assert all(torch.equal(a, b) for a, b in zip(model.unet.parameters(), result.get("ours", 0).unet.parameters()))
    mine, ours = clip.encoders["l"], result.get("ours", 1).encoders["l"]
    assert all(torch.equal(a, b) for a, b in zip(mine.parameters(), ours.parameters()))
    assert not torch.equal(model.unet.get_parameter("input_blocks.1.1.proj_in.weight"),
                           result.get("ck", 0).unet.get_parameter("input_blocks.1.1.proj_in.weight"))
    assert vae.vae is result.get("ck", 2).vae  # one read of the file: the process's model cache
    # a model-only application, as LoraLoaderModelOnly packs do
    utils, sd = comfy_compat.import_module("comfy.utils"), comfy_compat.import_module("comfy.sd")
    lora = utils.load_torch_file(str(site[0].find_model("loras", "demo.safetensors")), safe_load=True)
    only, none = sd.load_lora_for_models(result.get("ck", 0), None, lora, 0.8, 0.0)
    assert none is None and only.patches[-1] == ("LoRA", 0.8)
    assert all(torch.equal(a, b) for a, b in zip(only.unet.parameters(), result.get("ours", 0).unet.parameters()))
    with pytest.raises(TypeError, match="lora must be a dict of tensors, got str"):
        sd.load_lora_for_models(result.get("ck", 0), None, "demo.safetensors", 1.0, 1.0)
    with pytest.raises(TypeError, match="no file \(None\): the name was not found"):  # get_full_path's None
        utils.load_torch_file(None)


def test_split_files_through_comfy_sd_equal_the_split_loader_nodes(site):
    env = site[0]
    result = _run(site, {"u": ("UNETLoader", {"unet_name": "tiny_unet.safetensors", "weight_dtype": "default"}),
                         "c": ("DualCLIPLoader", {"clip_name1": "tiny_l.safetensors", "clip_name2": "tiny_g.safetensors",
                                                  "type": "sdxl"}),
                         "e": ("CLIPTextEncode", {"clip": ["c", 0], "text": "a small green triangle"})})
    sd = comfy_compat.import_module("comfy.sd")
    unet_path = str(env.find_model("diffusion_models", "tiny_unet.safetensors"))
    model = sd.load_diffusion_model(unet_path)  # outside a node: read afresh, not from the executor's cache
    ours = result.get("u")
    assert model.unet is not ours.unet
    assert all(torch.equal(a, b) for a, b in zip(model.unet.parameters(), ours.unet.parameters()))
    held = sd.load_unet(unet_path, torch.float8_e4m3fn)
    assert held.unet.get_parameter("out.2.weight").dtype == torch.float8_e4m3fn
    assert held.model.manual_cast_dtype == torch.float32 and model.model.manual_cast_dtype is None
    paths = [str(env.find_model("text_encoders", f"tiny_{e}.safetensors")) for e in ("g", "l")]  # either order
    clip = sd.load_clip(paths, clip_type=sd.CLIPType.STABLE_DIFFUSION)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a small green triangle"), return_pooled=True)
    (entry,) = result.get("e")
    assert torch.equal(cond, entry[0]) and torch.equal(pooled, entry[1]["pooled_output"])
    with pytest.raises(TypeError, match="clip_type must be a comfy.sd.CLIPType"):
        sd.load_clip(paths, clip_type="sdxl")
    with pytest.raises(ValueError, match="only 'dtype' is applied"):
        sd.load_diffusion_model(unet_path, {"custom_operations": object()})


def test_bad_input_names_what_is_wrong(site):
    base = _run(site, LOADER).get("ck", 0)
    m = base.clone()
    with pytest.raises(PatchError, match=r"diffusion_model.out.2.bias: the diff patch has shape \(3,\), the weight \(4,\)"):
        m.add_patches({BIAS: (torch.zeros(3),)})
    with pytest.raises(PatchError, match="'lora' patch is not one latentgraph applies"):
        m.add_patches({BIAS: ("lora", (torch.zeros(4),))})
    with pytest.raises(ValueError, match="object patches to model_sampling, diffusion_model"):
        m.add_object_patch("latent_format", object())
    with pytest.raises(TypeError, match="it has no sigmas, sigma_min"):
        m.add_object_patch("model_sampling", object())
    with pytest.raises(AttributeError, match="model.model has no 'diffusion_model.no_such'"):
        m.get_model_object("diffusion_model.no_such.weight")
    assert m.unet is base.unet and m.schedule is base.schedule  # nothing half-applied
    clip, vae = _run(site, LOADER).get("ck", 1), _run(site, LOADER).get("ck", 2)
    with pytest.raises(ValueError, match=r"expected the tokens of this CLIP's encoders \['l'\]"):
        clip.encode_from_tokens({"g": []})
    with pytest.raises(ValueError, match=r"decodes latents \(B, 4, h, w\), got \(1, 3, 8, 8\)"):
        vae.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"encodes IMAGE tensors \(B, H, W, 3\) in 0..1, got \(3, 64, 64\)"):
        vae.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="tiles are square"):
        vae.decode_tiled(torch.zeros(1, 4, 8, 8), tile_x=4, tile_y=8)


def test_wrappers_added_read_and_removed_by_key(site):
    base = _run(site, {**LOADER, **SAMPLE})
    model, cond = base.get("ck", 0).clone(), base.get("pos")[0][0]
    calls = []

    def counting(executor, *args):
        calls.append(args[0].shape)
        return executor(*args)

    model.add_wrapper_with_key("diffusion_model", "pack", counting)
    model.add_wrapper("diffusion_model", counting)
    assert model.get_wrappers("diffusion_model", "pack") == [counting] and len(model.get_all_wrappers("diffusion_model")) == 2
    twin = model.clone()
    x, sigma = torch.zeros(1, 4, 8, 8), torch.tensor([1.0])
    model.model.apply_model(x, sigma, c_crossattn=cond, transformer_options=model.model_options["transformer_options"])
    assert len(calls) == 2
    model.remove_wrappers_with_key("diffusion_model", "pack")
    model.model.apply_model(x, sigma, c_crossattn=cond, transformer_options=model.model_options["transformer_options"])
    assert len(calls) == 3 and twin.get_wrappers("diffusion_model", "pack") == [counting]  # the clone keeps its own


def test_manual_cast_dtype_names_the_compute_dtype_of_a_cast_unet(site):
    from latentgraph.models.comfy_faces import _manual_cast_dtype

    base = _run(site, LOADER).get("ck", 0)
    assert base.model.manual_cast_dtype is None and base.weight_inplace_update is False
    held = torch.nn.Linear(2, 2).to(torch.float16)
    held.compute_dtype = torch.float32  # as models/fp8.py records a UNet stored in another dtype
    assert _manual_cast_dtype(base.clone(unet=held)) == torch.float32


def test_latent_formats_model_base_and_model_sampling_modules():
    lf = comfy_compat.import_module("comfy.latent_formats")
    mb = comfy_compat.import_module("comfy.model_base")
    ms = comfy_compat.import_module("comfy.model_sampling")
    from latentgraph.nodes.preview import _RGB
    from latentgraph.sampling.schedule import PLAYGROUND_V25, DiscreteSchedule

    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(lf.SD15().process_in(x), x * 0.18215) and lf.SDXL().scale_factor == 0.13025
    assert torch.allclose(lf.SDXL_Playground_2_5().process_in(x), PLAYGROUND_V25.process_in(x))
    assert [tuple(r) for r in lf.SD15().latent_rgb_factors] == list(_RGB["sd"][0])
    assert tuple(lf.SDXL().latent_rgb_factors_bias) == _RGB["sdxl"][1]
    assert [m.value for m in mb.ModelType][:3] == [1, 2, 3] and mb.ModelType.FLOW.value == 6
    v = mb.model_sampling(None, mb.ModelType.V_PREDICTION)
    ours = DiscreteSchedule("v")
    sigma, out = torch.tensor([5.0]), torch.randn(1, 4, 3, 3)
    assert torch.equal(v.sigmas, ours.sigmas) and isinstance(v, ms.V_PREDICTION)
    assert torch.allclose(v.calculate_denoised(sigma, out, x[:1]), ours.calculate_denoised(sigma, out, x[:1]))
    assert isinstance(ours, ms.V_PREDICTION) and not isinstance(DiscreteSchedule("eps"), ms.V_PREDICTION)
    assert not isinstance(ours, type("Mine", (ms.ModelSamplingDiscrete, ms.EPS), {}))  # a pack's class: its own only
    assert ms.time_snr_shift(3.0, 0.5) == 0.75 and ms.time_snr_shift(1.0, 0.3) == 0.3
    mp = comfy_compat.import_module("comfy.model_patcher")
    net = torch.nn.Linear(2, 2)
    p = mp.ModelPatcher(net, torch.device("cpu"), torch.device("cpu"))
    q = p.clone()
    assert q.add_patches({"bias": ("set", (torch.tensor([1.0, 2.0]),))}) == ["bias"]
    assert torch.equal(q.model.bias, torch.tensor([1.0, 2.0])) and p.model is net and q.model.weight is net.weight
    assert isinstance(p, mp.ModelPatcher) and q.is_clone(p) is False and p.clone().is_clone(p)
    # a slice of a weight, with a function, strength and strength_model (ComfyUI's entry order)
    r = p.clone()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    key = ("weight", (1, 1, 1), lambda t: t * 2)
    assert r.add_patches({key: (torch.ones(2, 1),)}, strength_patch=0.5, strength_model=3.0) == [key]
    assert torch.equal(r.model.weight, torch.tensor([[1.0, 7.0], [3.0, 13.0]]))  # column 1: 3w + 2 * 0.5
    entries = [(1.0, ("diff", (torch.ones(2, 2),)), 0.5, None, None)]
    assert torch.equal(mp.calculate_weight(entries, net.weight, "weight"), torch.tensor([[1.5, 2.0], [2.5, 3.0]]))
    with pytest.raises(PatchError, match=r"offset must be \(dim, start, length\)"):
        r.add_patches({("weight", 3): (torch.ones(1),)})


def test_names_left_out_are_reported_missing(tmp_path):
    assert comfy_compat.provides("comfy.sd.load_checkpoint_guess_config")
    assert comfy_compat.provides("comfy.model_patcher.ModelPatcher")
    assert not comfy_compat.provides("comfy.model_sampling.CONST")  # flow models: not loaded here
    assert not comfy_compat.provides("comfy.sd.load_checkpoint")  # the config-file loader of old
    pack = tmp_path / "nodes_dir" / "wants_flow"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        import comfy.model_sampling
        class Flow(comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST):
            pass
        NODE_CLASS_MAPPINGS = {}
    """))
    (info,) = load_plugins(create_registry(), [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "needs ComfyUI" and info.needs == "comfy.model_sampling.ModelSamplingDiscreteFlow"
    assert "face_pack" not in sys.modules  # this test's pack is a separate one


def test_an_sdxl_value_answers_as_comfyuis_sdxl():
    from latentgraph.models.clip import TextModel
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.make import random_networks
    from latentgraph.nodes.sd import SDModel, schedule_for

    mb, lf = comfy_compat.import_module("comfy.model_base"), comfy_compat.import_module("comfy.latent_formats")
    sd = comfy_compat.import_module("comfy.sd")
    arch = tiny_architecture("sdxl")
    unet, _, text = random_networks(arch, seed=5)
    model, clip = SDModel(unet, arch, schedule_for(arch), Placement()), TextModel(arch, text, Placement())
    assert isinstance(model.model, mb.SDXL) and not isinstance(model.model, mb.SDXLRefiner)
    assert isinstance(model.model.latent_format, lf.SDXL) and model.model.latent_format.scale_factor == 0.13025
    assert model.model.adm_channels == 16 + 6 * 256 == model.model.model_config.unet_config["adm_in_channels"]
    assert isinstance(clip, sd.CLIP) and not isinstance(model, sd.CLIP)
    tokens = clip.tokenize("a blue square")
    assert sorted(tokens) == ["g", "l"]
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    ref_cond, ref_pooled = clip.encode_tokens(tokens)
    assert torch.equal(cond, ref_cond) and torch.equal(pooled, ref_pooled) and cond.shape == (1, 77, 32)
    # bigG's projection under ComfyUI's key: the pooled output changes, the cond (hidden states) does not
    key = "clip_g.transformer.text_projection.weight"
    patched = clip.clone()
    (proj, _), = patched.get_key_patches()[key]
    assert patched.add_patches({key: ("set", (torch.eye(proj.shape[0]),))}) == [key]
    new_cond, new_pooled = patched.encode_from_tokens(tokens, return_pooled=True)
    assert torch.equal(new_cond, cond) and not torch.allclose(new_pooled, pooled)
    assert "clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight" in patched.get_key_patches()
    assert clip.encoders["g"].text_projection.weight is proj  # the input CLIP is as it was


def test_cond_stage_model_encodes_as_the_clip_value_and_answers_isinstance_per_family():
    """clip.cond_stage_model (ADV_CLIP_emb's advanced encode, Efficiency's and tinyterra's copies
    of it): encode_token_weights gives encode_from_tokens' result, set_clip_options picks the
    layer as clip_layer does until reset, clip_l/clip_g encode one encoder (SDXL's cond is L
    beside G), and the sd1_clip/sdxl_clip model classes answer isinstance per family."""
    from latentgraph.models.clip import TextModel
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.make import random_networks

    sd1c, sdxlc = comfy_compat.import_module("comfy.sd1_clip"), comfy_compat.import_module("comfy.sdxl_clip")
    clips = {}
    for family in ("sd15", "sdxl", "sdxl_refiner"):
        arch = tiny_architecture(family)
        clips[family] = TextModel(arch, random_networks(arch, seed=6)[2], Placement())
    sd1, xl, refiner = clips["sd15"], clips["sdxl"], clips["sdxl_refiner"]
    assert isinstance(sd1.cond_stage_model, sd1c.SD1ClipModel)
    assert not isinstance(sd1.cond_stage_model, (sdxlc.SDXLClipModel, sdxlc.SDXLRefinerClipModel, sdxlc.SDXLClipG))
    assert isinstance(xl.cond_stage_model, sdxlc.SDXLClipModel) and not isinstance(xl.cond_stage_model,
                                                                                 sd1c.SD1ClipModel)
    # ComfyUI's refiner model is an SD1ClipModel subclass: isinstance of both
    assert isinstance(refiner.cond_stage_model, sdxlc.SDXLRefinerClipModel)
    assert isinstance(refiner.cond_stage_model, sd1c.SD1ClipModel)
    own = type("PackClip", (sd1c.SD1ClipModel,), {})  # a pack's subclass is its own class
    assert not isinstance(sd1.cond_stage_model, own)

    for clip in (sd1, xl):
        tokens = clip.tokenize("a (red:1.3) circle")
        model = clip.cond_stage_model
        assert model is clip.cond_stage_model  # one per value: options set on it stay
        cond, pooled = model.encode_token_weights(tokens)
        ref_cond, ref_pooled = clip.encode_from_tokens(tokens, return_pooled=True)
        assert torch.equal(cond, ref_cond) and torch.equal(pooled, ref_pooled)
        layer = -2 if clip is sd1 else -1  # not the family's default (SDXL encodes from the penultimate layer)
        model.set_clip_options({"layer": layer, "execution_device": "cpu"})
        skipped = clip.clone()
        skipped.clip_layer(layer)
        two = skipped.encode_from_tokens(tokens)
        assert torch.equal(model.encode_token_weights(tokens)[0], two) and not torch.equal(two, cond)
        model.reset_clip_options()
        assert torch.equal(model.encode_token_weights(tokens)[0], cond)
        with pytest.raises(ValueError, match="not \\['projected_pooled'\\]"):
            model.set_clip_options({"projected_pooled": False})
        with pytest.raises(ValueError, match="expected the tokens of this CLIP's encoders"):
            model.encode_token_weights({"x": tokens[next(iter(tokens))]})

    tokens = xl.tokenize("a blue square")
    cond, pooled = xl.cond_stage_model.encode_token_weights(tokens)
    l_cond, _ = xl.cond_stage_model.clip_l.encode_token_weights(tokens["l"])
    g_cond, g_pooled = xl.cond_stage_model.clip_g.encode_token_weights(tokens["g"])
    assert torch.equal(cond, torch.cat([l_cond, g_cond], dim=-1)) and torch.equal(pooled, g_pooled)
    with pytest.raises(AttributeError, match="clip_l, clip_g"):
        xl.cond_stage_model.clip_h


def test_clip_patcher_state_dict_names_the_weights_patches_address():
    """ComfyUI_essentials' attention seekers: read clip.patcher.model_state_dict()'s keys, then
    scale the chosen weights with add_patches({key: (None,)}, 0.0, strength)."""
    from latentgraph.models.clip import TextModel
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.make import random_networks

    arch = tiny_architecture("sd15")
    clip = TextModel(arch, random_networks(arch, seed=8)[2], Placement())
    sd = clip.patcher.model_state_dict()
    assert set(sd) == set(clip.patcher.get_key_patches()) and len(sd) == len(list(clip.encoders["l"].parameters()))
    key = "clip_l.transformer.text_model.encoder.layers.1.self_attn.q_proj.weight"
    assert sd[key] is clip.encoders["l"].get_parameter("transformer.encoder.layers.1.self_attn.q_proj.weight")
    assert set(clip.patcher.model_state_dict("clip_l.transformer.text_model.encoder.layers.1.")) == {
        k for k in sd if k.startswith("clip_l.transformer.text_model.encoder.layers.1.")}
    m = clip.clone()
    assert m.add_patches({key: (None,)}, 0.0, 0.5) == [key]
    assert torch.allclose(m.patcher.model_state_dict()[key], sd[key] * 0.5)
    assert torch.equal(clip.patcher.model_state_dict()[key], sd[key])  # the input CLIP is as it was
