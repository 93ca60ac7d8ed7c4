"""The Stable Diffusion nodes on tiny checkpoints: their /object_info matches ComfyUI's, and
each one does what it says (values, shapes, options it sets, errors it gives)."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, Interrupted, ValidationError, Workflow
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes import create_registry, create_services


@pytest.fixture(scope="module")
def ex(tmp_path_factory) -> Executor:
    root = tmp_path_factory.mktemp("sd")
    make_checkpoint(root / "models" / "checkpoints" / "sd15.safetensors", "sd15", "tiny", seed=4)
    make_checkpoint(root / "models" / "checkpoints" / "xl.safetensors", "sdxl", "tiny", seed=5)
    make_checkpoint(root / "models" / "checkpoints" / "refiner.safetensors", "sdxl_refiner", "tiny", seed=6)
    sd = load_file(root / "models" / "checkpoints" / "sd15.safetensors")
    vae = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    (root / "models" / "vae").mkdir()
    save_file(vae, str(root / "models" / "vae" / "tiny-vae.safetensors"))
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env, services=create_services(env))


def base(ckpt="sd15.safetensors", size=64) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=ckpt)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("empty", "EmptyLatentImage", width=size, height=size, batch_size=1)
    return wf


def get(ex, wf, node, output=0):
    return ex.run(wf, targets=[node]).get(node, output)


def test_object_info_matches_comfyui_for_the_sampling_nodes():
    info = create_registry().object_info()
    k = info["KSampler"]
    assert k["input_order"]["required"] == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                            "negative", "latent_image", "denoise"]
    assert k["input"]["required"]["seed"][1]["max"] == 0xFFFFFFFFFFFFFFFF
    assert k["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert k["input"]["required"]["steps"][1] == {"default": 20, "min": 1, "max": 10000,
                                                  "tooltip": "The number of steps used in the denoising process."}
    assert k["input"]["required"]["sampler_name"][0][:4] == ["euler", "euler_cfg_pp", "euler_ancestral",
                                                             "euler_ancestral_cfg_pp"]
    names = k["input"]["required"]["sampler_name"][0]
    assert len(names) == 42  # ComfyUI 0.3.64's order, each _gpu SDE variant after its sampler
    assert names[13:23] == ["dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
                            "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde",
                            "dpmpp_3m_sde_gpu"]
    assert names[-5:] == ["sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2"]
    assert k["input"]["required"]["scheduler"][0] == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform",
                                                      "beta", "normal", "linear_quadratic", "kl_optimal"]
    assert k["output"] == ["LATENT"] and k["category"] == "sampling"
    adv = info["KSamplerAdvanced"]["input_order"]["required"]
    assert adv == ["model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                   "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    assert info["LoraLoader"]["input_order"]["required"] == ["model", "clip", "lora_name", "strength_model",
                                                             "strength_clip"]
    assert info["SamplerCustom"]["output_name"] == ["output", "denoised_output"]
    assert info["SplitSigmas"]["output_name"] == ["high_sigmas", "low_sigmas"]
    assert info["VAEEncodeForInpaint"]["input"]["required"]["grow_mask_by"][1] == {"default": 6, "min": 0, "max": 64,
                                                                                   "step": 1}


def test_missing_checkpoint_names_the_folders_searched(ex):
    wf = base("nope.safetensors")
    with pytest.raises(ValidationError) as info:
        ex.run(wf, targets=["pos"])
    text = info.value.format()
    assert "checkpoint 'nope.safetensors' not found (searched:" in text and "checkpoints" in text


def test_custom_sampling_nodes_reproduce_ksampler(ex):
    wf = base()
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=3, steps=5, cfg=4.0, sampler_name="dpmpp_2m",
           scheduler="karras", positive="pos", negative="neg", latent_image="empty", denoise=1.0)
    wf.add("sel", "KSamplerSelect", sampler_name="dpmpp_2m")
    wf.add("sig", "BasicScheduler", model="ckpt.MODEL", scheduler="karras", steps=5, denoise=1.0)
    wf.add("custom", "SamplerCustom", model="ckpt.MODEL", add_noise=True, noise_seed=3, cfg=4.0, positive="pos",
           negative="neg", sampler="sel", sigmas="sig", latent_image="empty")
    wf.add("split", "SplitSigmas", sigmas="sig", step=2)
    res = ex.run(wf, targets=["k", "custom", "split", "sig"])
    assert torch.equal(res.get("k")["samples"], res.get("custom", 0)["samples"])
    assert res.get("custom", 1)["samples"].shape == (1, 4, 8, 8)
    sig = res.get("sig")
    high, low = res.get("split", 0), res.get("split", 1)
    assert len(sig) == 6 and torch.equal(high, sig[:3]) and torch.equal(low, sig[2:])


def test_karras_and_turbo_schedulers(ex):
    wf = base()
    wf.add("karras", "KarrasScheduler", steps=4, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
    wf.add("turbo", "SDTurboScheduler", model="ckpt.MODEL", steps=2, denoise=1.0)
    res = ex.run(wf, targets=["karras", "turbo"])
    karras, turbo = res.get("karras"), res.get("turbo")
    assert len(karras) == 5 and karras[-1] == 0 and abs(float(karras[0]) - 14.614642) < 1e-4
    assert len(turbo) == 3 and turbo[-1] == 0 and abs(float(turbo[0]) - 14.6146) < 1e-3


def test_sdxl_text_nodes_set_size_options(ex):
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="xl.safetensors")
    wf.add("sdxl", "CLIPTextEncodeSDXL", clip=ck.CLIP, width=1024, height=768, crop_w=0, crop_h=0,
           target_width=1024, target_height=768, text_g="a castle " * 40, text_l="a castle")
    wf.add("plain", "CLIPTextEncode", clip=ck.CLIP, text="a castle")
    ref = wf.add("rck", "CheckpointLoaderSimple", ckpt_name="refiner.safetensors")
    wf.add("refiner", "CLIPTextEncodeSDXLRefiner", clip=ref.CLIP, ascore=2.5, width=1024, height=1024, text="a castle")
    res = ex.run(wf, targets=["sdxl", "plain", "refiner"])
    (cond, opts), = res.get("sdxl")
    assert cond.shape == (1, 154, 32)  # text_g needs 2 chunks; text_l is padded to 2 as well
    assert opts["width"] == 1024 and opts["height"] == 768 and opts["pooled_output"].shape == (1, 16)
    (rcond, ropts), = res.get("refiner")
    assert rcond.shape == (1, 77, 16) and ropts["aesthetic_score"] == 2.5
    wf.add("wrong", "CLIPTextEncodeSDXL", clip=ref.CLIP, text_g="x", text_l="y")
    from latentgraph.graph import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="needs an SDXL base checkpoint's CLIP"):
        ex.run(wf, targets=["wrong"])


def test_conditioning_nodes_set_their_options(ex):
    wf = base()
    wf.add("mask", "SolidMask", value=1.0, width=64, height=64)
    wf.add("masked", "ConditioningSetMask", conditioning="pos", mask="mask", strength=0.7, set_cond_area="mask bounds")
    wf.add("timed", "ConditioningSetTimestepRange", conditioning="pos", start=0.2, end=0.8)
    wf.add("concat", "ConditioningConcat", conditioning_to="pos", conditioning_from="neg")
    wf.add("zero", "ConditioningZeroOut", conditioning="pos")
    wf.add("strength", "ConditioningSetAreaStrength", conditioning="pos", strength=2.0)
    wf.add("pct", "ConditioningSetAreaPercentage", conditioning="pos", width=0.5, height=0.25, x=0.5, y=0.0,
           strength=1.0)
    res = ex.run(wf, targets=["pos", "masked", "timed", "concat", "zero", "strength", "pct"])
    (t, opts), = res.get("masked")
    assert opts["mask_strength"] == 0.7 and opts["set_area_to_bounds"] and opts["mask"].shape == (1, 64, 64)
    assert res.get("timed")[0][1]["start_percent"] == 0.2 and res.get("timed")[0][1]["end_percent"] == 0.8
    assert res.get("concat")[0][0].shape == (1, 154, 32)
    assert res.get("zero")[0][0].abs().sum() == 0 and res.get("zero")[0][1]["pooled_output"].abs().sum() == 0
    assert res.get("strength")[0][1]["strength"] == 2.0
    assert res.get("pct")[0][1]["area"] == ("percentage", 0.25, 0.5, 0.0, 0.5)
    assert "mask" not in res.get("pos")[0][1]  # inputs are never mutated
    # they all sample
    for name in ("masked", "timed", "concat", "zero", "pct"):
        wf.add(f"k_{name}", "KSampler", model="ckpt.MODEL", seed=1, steps=2, cfg=3.0, sampler_name="euler",
               scheduler="normal", positive=name, negative="neg", latent_image="empty", denoise=1.0)
        assert torch.isfinite(get(ex, wf, f"k_{name}")["samples"]).all()


def test_clip_skip_changes_the_encoding(ex):
    wf = base()
    wf.add("skip", "CLIPSetLastLayer", clip="ckpt.CLIP", stop_at_clip_layer=-2)
    wf.add("pos2", "CLIPTextEncode", clip="skip", text="a red circle")
    res = ex.run(wf, targets=["pos", "pos2"])
    assert not torch.allclose(res.get("pos")[0][0], res.get("pos2")[0][0])
    assert torch.equal(res.get("pos")[0][1]["pooled_output"], res.get("pos2")[0][1]["pooled_output"])


def test_vae_nodes(ex):
    wf = base(size=128)
    wf.add("img", "EmptyImage", width=128, height=96, batch_size=1, color=0x808080)
    wf.add("enc", "VAEEncode", pixels="img", vae="ckpt.VAE")
    wf.add("dec", "VAEDecode", samples="enc", vae="ckpt.VAE")
    wf.add("tdec", "VAEDecodeTiled", samples="enc", vae="ckpt.VAE", tile_size=64, overlap=16)
    wf.add("tenc", "VAEEncodeTiled", pixels="img", vae="ckpt.VAE", tile_size=64, overlap=32)
    wf.add("vae", "VAELoader", vae_name="tiny-vae.safetensors")
    wf.add("dec2", "VAEDecode", samples="enc", vae="vae")
    wf.add("mask", "SolidMask", value=1.0, width=128, height=96)
    wf.add("inp", "VAEEncodeForInpaint", pixels="img", vae="ckpt.VAE", mask="mask", grow_mask_by=6)
    res = ex.run(wf, targets=["enc", "dec", "tdec", "tenc", "dec2", "inp"])
    assert res.get("enc")["samples"].shape == (1, 4, 12, 16)
    assert res.get("dec").shape == res.get("tdec").shape == (1, 96, 128, 3)
    assert res.get("tenc")["samples"].shape == (1, 4, 12, 16)
    assert torch.equal(res.get("dec"), res.get("dec2"))  # the standalone file holds the same weights
    inp = res.get("inp")
    assert inp["noise_mask"].shape == (1, 1, 96, 128) and inp["noise_mask"].min() == 1
    # everything was masked: the encoded pixels were all grey (0.5), whatever the input
    wf.set("img.color", 0xFF0000)
    assert torch.allclose(get(ex, wf, "inp")["samples"], inp["samples"])


def test_interrupt_during_sampling(ex):
    wf = base()
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=9, steps=50, cfg=3.0, sampler_name="euler",
           scheduler="normal", positive="pos", negative="neg", latent_image="empty", denoise=1.0)
    steps = []

    def listener(kind, data):
        if kind == "progress" and data["node"] == "k":
            steps.append(data["value"])
            if data["value"] == 3:
                threading.Thread(target=ex.interrupt).start()

    with pytest.raises(Interrupted) as info:
        ex.run(wf, targets=["k"], listener=listener)
    assert info.value.node_id == "k" and 3 <= len(steps) < 50
