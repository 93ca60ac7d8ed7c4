"""Split-file loaders (UNETLoader, CLIPLoader, DualCLIPLoader, DiffusersLoader): the same weights
split into files sample exactly as the checkpoint they came from, in every layout; fp8 weights
halve the fp16 UNet's memory and compute as fp8-rounded weights; the refusals name the file,
what it holds and what is supported; fp8 and default loads agree with ComfyUI 0.3.64's UNETLoader
(tests/fixtures/comfy_reference/split_loaders/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import detect_architecture, read_state_dict, save_checkpoint
from latentgraph.models.diffusers_layout import ldm_unet_to_diffusers, ldm_vae_to_diffusers
from latentgraph.models.errors import CheckpointError
from latentgraph.models.families import METADATA_KEY, UNET_PREFIX, VAE_PREFIX
from latentgraph.models.fp8 import parameter_bytes
from latentgraph.models.make import make_checkpoint
from latentgraph.models.make_split import make_diffusers, make_text_encoder, make_unet
from latentgraph.models.split_files import TEXT_RECORD, load_clip_files, load_unet_file
from latentgraph.models.text_encoders import to_openclip_keys
from latentgraph.models.unet import UNetModel
from latentgraph.nodes import create_registry
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
ORACLE = REF / "split_loaders"
TEXT_PREFIX = "cond_stage_model.transformer."


def split_tiny_sd15(models: Path) -> None:
    """tests/fixtures/comfy_reference/tiny_sd15.safetensors as a checkpoint with our record and as
    split files: the UNet alone (bare LDM keys; and in diffusers keys), its CLIP-L alone (HF keys;
    and OpenCLIP keys), its VAE alone. The oracle's files were made by this function."""
    sd, _ = read_state_dict(REF / "tiny_sd15.safetensors")
    arch = detect_architecture(sd, None, "tiny_sd15", {"unet_num_heads": 8, "text_num_heads": 2})
    record = {METADATA_KEY: arch.to_json()}
    for folder in ("checkpoints", "diffusion_models", "text_encoders", "vae"):
        (models / folder).mkdir(parents=True, exist_ok=True)
    save_checkpoint(sd, models / "checkpoints" / "tiny_sd15.safetensors", record)
    unet = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    save_checkpoint(unet, models / "diffusion_models" / "lgL_tiny_unet.safetensors", record)
    with torch.device("meta"):
        skeleton = UNetModel(arch.unet)
    skeleton.load_state_dict(unet, assign=True)
    save_checkpoint(ldm_unet_to_diffusers(skeleton), models / "diffusion_models" / "lgL_tiny_unet_diffusers.safetensors",
                    record)
    text = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
    text_record = {TEXT_RECORD: json.dumps({"name": "l", "config": arch.text["l"].to_dict()}, sort_keys=True)}
    save_checkpoint(text, models / "text_encoders" / "lgL_tiny_clip_l.safetensors", text_record)
    ours = {"transformer." + k[len("text_model."):]: v for k, v in text.items()}
    save_checkpoint(to_openclip_keys(ours, ""), models / "text_encoders" / "lgL_tiny_clip_l_openclip.safetensors",
                    text_record)
    vae = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    save_checkpoint(vae, models / "vae" / "lgL_tiny_vae.safetensors", {})


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("split") / "models"
    split_tiny_sd15(models)
    return models


@pytest.fixture(scope="module")
def executor(models) -> Executor:
    root = models.parent
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp", models_dir=models,
                      device="cpu")
    return Executor(create_registry(), env)


def sampled(executor: Executor, loaders: dict, model="unet.0", clip="clip.0", seed=42, steps=6) -> torch.Tensor:
    """The oracle prompts' graph: "a red circle" / "blurry", 64x64, euler/normal, cfg 5."""
    wf = Workflow()
    for name, (cls, inputs) in loaders.items():
        wf.add(name, cls, **inputs)
    wf.add("pos", "CLIPTextEncode", clip=clip, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=clip, text="blurry")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("k", "KSampler", model=model, seed=seed, steps=steps, cfg=5.0, sampler_name="euler", scheduler="normal",
           positive="pos", negative="neg", latent_image="empty", denoise=1.0)
    return executor.run(wf, targets=["k"]).get("k")["samples"]


def split(unet="lgL_tiny_unet.safetensors", weight_dtype="default", clip="lgL_tiny_clip_l.safetensors") -> dict:
    return {"unet": ("UNETLoader", {"unet_name": unet, "weight_dtype": weight_dtype}),
            "clip": ("CLIPLoader", {"clip_name": clip, "type": "stable_diffusion"})}


CHECKPOINT = {"ck": ("CheckpointLoaderSimple", {"ckpt_name": "tiny_sd15.safetensors"})}


def test_split_files_sample_as_their_checkpoint_bit_for_bit(executor):
    whole = sampled(executor, CHECKPOINT, "ck.0", "ck.1")
    assert whole.abs().max() > 100  # a random UNet does not denoise: a real, large latent
    for unet in ("lgL_tiny_unet.safetensors", "lgL_tiny_unet_diffusers.safetensors"):
        for clip in ("lgL_tiny_clip_l.safetensors", "lgL_tiny_clip_l_openclip.safetensors"):
            assert torch.equal(sampled(executor, split(unet, clip=clip)), whole), (unet, clip)


def test_the_vae_alone_decodes_as_the_checkpoints(executor):
    wf = Workflow()
    wf.add("ck", "CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    wf.add("vae", "VAELoader", vae_name="lgL_tiny_vae.safetensors")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("a", "VAEDecode", samples="empty", vae="ck.2")
    wf.add("b", "VAEDecode", samples="empty", vae="vae.0")
    res = executor.run(wf, targets=["a", "b"])
    assert res.get("a").shape == (1, 64, 64, 3) and torch.equal(res.get("a"), res.get("b"))


@pytest.mark.parametrize("weight_dtype", ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"])
def test_unet_loader_matches_comfyui(executor, weight_dtype):
    ref = load_file(ORACLE / "split_loaders_ref.safetensors")
    key = "fp8_e4m3fn" if weight_dtype == "fp8_e4m3fn_fast" else weight_dtype  # the same on a CPU
    out = sampled(executor, split(weight_dtype=weight_dtype))
    want = ref[f"sample/{key}"]
    assert out.shape == want.shape == (1, 4, 8, 8)
    rel = float((out - want).abs().max() / want.abs().max())
    assert rel < 1e-4, rel


def test_fp8_weights_differ_from_fp32_as_comfyuis_do():
    """The oracle's fp8 latents differ from its fp32 one by far more than the tolerance: the
    parity above could not pass with the weights left in fp32."""
    ref = load_file(ORACLE / "split_loaders_ref.safetensors")
    for key in ("fp8_e4m3fn", "fp8_e5m2"):
        gap = float((ref[f"sample/{key}"] - ref["sample/default"]).abs().max() / ref["sample/default"].abs().max())
        assert gap > 1e-3, (key, gap)


# -- fp8 -------------------------------------------------------------------------------------
def test_fp8_halves_the_fp16_unet_and_computes_as_rounded_weights(models):
    path = models / "diffusion_models" / "lgL_tiny_unet.safetensors"
    full, _ = load_unet_file(path, torch.float32)
    half, _ = load_unet_file(path, torch.float16)
    numel = sum(p.numel() for p in full.parameters())
    x, t, ctx = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500.0]), \
        torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        fp8, _ = load_unet_file(path, torch.float32, dtype)
        assert {p.dtype for p in fp8.parameters()} == {dtype}
        assert parameter_bytes(fp8) == numel == parameter_bytes(half) // 2 == parameter_bytes(full) // 4
        rounded, _ = load_unet_file(path, torch.float32)
        with torch.no_grad():
            for p in rounded.parameters():
                p.copy_(p.to(dtype).float())
            want, got = rounded(x, t, ctx), fp8(x, t, ctx)
        assert got.dtype == torch.float32 and torch.equal(got, want)
        assert not torch.equal(got, full(x, t, ctx))  # rounding to fp8 changes the result


def test_a_lora_applies_to_an_fp8_unet_in_float32_and_stays_fp8(executor, models):
    """ComfyUI patches fp8 weights in float32 and stores them back in fp8 (with stochastic
    rounding; latentgraph rounds to nearest)."""
    from latentgraph.nodes.sd import SDModel

    name = "input_blocks.1.1.transformer_blocks.0.attn1.to_q"
    base = load_unet_file(models / "diffusion_models" / "lgL_tiny_unet.safetensors", torch.float32,
                          torch.float8_e4m3fn)[0].get_submodule(name).weight
    gen = torch.Generator().manual_seed(3)
    up, down = torch.randn(base.shape[0], 4, generator=gen) * 0.5, torch.randn(4, base.shape[1], generator=gen) * 0.5
    (models / "loras").mkdir(exist_ok=True)
    save_file({f"lora_unet_{name.replace('.', '_')}.lora_up.weight": up,
               f"lora_unet_{name.replace('.', '_')}.lora_down.weight": down,
               f"lora_unet_{name.replace('.', '_')}.alpha": torch.tensor(4.0)},
              str(models / "loras" / "lgL_fp8_lora.safetensors"))
    wf = Workflow()
    wf.add("unet", "UNETLoader", unet_name="lgL_tiny_unet.safetensors", weight_dtype="fp8_e4m3fn")
    wf.add("lora", "LoraLoaderModelOnly", model="unet.0", lora_name="lgL_fp8_lora.safetensors", strength_model=0.8)
    model: SDModel = executor.run(wf, targets=["lora"]).get("lora")
    patched = model.unet.get_submodule(name).weight
    assert patched.dtype == torch.float8_e4m3fn and model.dtype == torch.float32
    assert torch.equal(patched, (base.float() + 0.8 * up @ down).to(torch.float8_e4m3fn))
    assert not torch.equal(patched.float(), base.float())
    other = "input_blocks.1.1.transformer_blocks.0.attn1.to_k"
    assert model.unet.get_submodule(other).weight.dtype == torch.float8_e4m3fn
