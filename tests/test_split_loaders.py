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
from latentgraph.models.diffusers_layout import ldm_unet_to_diffusers
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
    whole = sampled(executor, CHECKPOINT, "ck.0", "ck.1", steps=3)
    assert whole.abs().max() > 100  # a random UNet does not denoise: a real, large latent
    for unet in ("lgL_tiny_unet.safetensors", "lgL_tiny_unet_diffusers.safetensors"):
        for clip in ("lgL_tiny_clip_l.safetensors", "lgL_tiny_clip_l_openclip.safetensors"):
            assert torch.equal(sampled(executor, split(unet, clip=clip), steps=3), whole), (unet, clip)


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


# -- other families, diffusers folders -------------------------------------------------------
@pytest.fixture(scope="module")
def made(models) -> Path:
    """make-checkpoint's sdxl checkpoint (seed 5) and the same weights as split files and folders."""
    make_checkpoint(models / "checkpoints" / "lgL_sdxl.safetensors", "sdxl", seed=5)
    for encoder in ("l", "g"):
        make_text_encoder(models / "text_encoders" / f"lgL_sdxl_{encoder}.safetensors", "sdxl", encoder, seed=5)
    make_text_encoder(models / "text_encoders" / "lgL_sdxl_g_openclip.safetensors", "sdxl", "g", seed=5,
                      layout="openclip")
    make_unet(models / "diffusion_models" / "lgL_sdxl_unet.safetensors", "sdxl", seed=5, layout="diffusers")
    make_diffusers(models / "diffusers" / "tiny" / "sdxl", "sdxl", seed=5)
    make_checkpoint(models / "checkpoints" / "lgL_sd15.safetensors", "sd15", seed=6)
    make_diffusers(models / "diffusers" / "sd15", "sd15", seed=6)
    return models


def encoded(executor: Executor, loaders: dict, clip: str) -> tuple[torch.Tensor, torch.Tensor]:
    wf = Workflow()
    for name, (cls, inputs) in loaders.items():
        wf.add(name, cls, **inputs)
    wf.add("enc", "CLIPTextEncode", clip=clip, text="a (red:1.2) circle")
    ((cond, extra),) = executor.run(wf, targets=["enc"]).get("enc")
    return cond, extra["pooled_output"]


def test_dual_clip_loader_reads_sdxl_encoders_in_either_order(executor, made):
    cond, pooled = encoded(executor, {"ck": ("CheckpointLoaderSimple", {"ckpt_name": "lgL_sdxl.safetensors"})}, "ck.1")
    assert cond.shape == (1, 77, 32) and pooled.shape == (1, 16)
    for first, second in (("lgL_sdxl_l", "lgL_sdxl_g"), ("lgL_sdxl_g_openclip", "lgL_sdxl_l")):
        dual = {"clip": ("DualCLIPLoader", {"clip_name1": f"{first}.safetensors", "clip_name2": f"{second}.safetensors",
                                            "type": "sdxl"})}
        got = encoded(executor, dual, "clip.0")
        assert torch.equal(got[0], cond) and torch.equal(got[1], pooled), (first, second)


def test_a_lone_bigg_is_the_refiners_text_encoder(made):
    arch, encoders = load_clip_files([made / "text_encoders" / "lgL_sdxl_g.safetensors"], "stable_diffusion")
    assert arch.family == "sdxl_refiner" and list(encoders) == ["g"] and encoders["g"].role.project_pooled


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_unet_and_diffusers_folders_sample_as_their_checkpoints(executor, made):
    whole = sampled(executor, {"ck": ("CheckpointLoaderSimple", {"ckpt_name": "lgL_sdxl.safetensors"})}, "ck.0", "ck.1",
                    steps=2)
    folder = sampled(executor, {"d": ("DiffusersLoader", {"model_path": "tiny/sdxl"})}, "d.0", "d.1", steps=2)
    # the same weights; a converted layout may take another kernel path, whose last bits differ
    # on some CPUs (equal on the Xeon, 1e-6 apart on an AMD EPYC)
    close(folder, whole)
    split_set = {"unet": ("UNETLoader", {"unet_name": "lgL_sdxl_unet.safetensors", "weight_dtype": "default"}),
                 "clip": ("DualCLIPLoader", {"clip_name1": "lgL_sdxl_g.safetensors",
                                             "clip_name2": "lgL_sdxl_l.safetensors", "type": "sdxl"})}
    close(sampled(executor, split_set, steps=2), whole)
    sd15 = sampled(executor, {"ck": ("CheckpointLoaderSimple", {"ckpt_name": "lgL_sd15.safetensors"})}, "ck.0", "ck.1",
                   steps=2)
    close(sampled(executor, {"d": ("DiffusersLoader", {"model_path": "sd15"})}, "d.0", "d.1", steps=2), sd15)


def test_the_diffusers_folders_are_listed_and_their_vae_decodes_as_the_checkpoints(executor, made):
    info = executor.registry.object_info(executor.env)["DiffusersLoader"]
    assert info["input"]["required"]["model_path"][0] == ["sd15", "tiny/sdxl"]
    wf = Workflow()
    wf.add("ck", "CheckpointLoaderSimple", ckpt_name="lgL_sd15.safetensors")
    wf.add("d", "DiffusersLoader", model_path="sd15")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("a", "VAEDecode", samples="empty", vae="ck.2")
    wf.add("b", "VAEDecode", samples="empty", vae="d.2")
    res = executor.run(wf, targets=["a", "b"])
    assert torch.equal(res.get("a"), res.get("b"))


# -- refusals --------------------------------------------------------------------------------
def failure(executor: Executor, cls: str, **inputs) -> str:
    wf = Workflow()
    wf.add("n", cls, **inputs)
    with pytest.raises(Exception) as raised:
        executor.run(wf, targets=["n"])
    return str(raised.value)


def test_clip_loader_refuses_other_types_and_other_files(executor, models):
    msg = failure(executor, "CLIPLoader", clip_name="lgL_tiny_clip_l.safetensors", type="sd3")
    assert ("CLIPLoader type 'sd3' is not supported: latentgraph loads the text encoders of Stable Diffusion "
            "1.x/2.x/XL only (type stable_diffusion: CLIP-L, OpenCLIP-H or OpenCLIP-bigG)") in msg
    (models / "text_encoders" / "unet_here.safetensors").write_bytes(
        (models / "diffusion_models" / "lgL_tiny_unet.safetensors").read_bytes())
    msg = failure(executor, "CLIPLoader", clip_name="unet_here.safetensors", type="stable_diffusion")
    assert "unet_here.safetensors: not a text encoder: the file holds a UNet: load it with UNETLoader " \
           "(Load Diffusion Model) from diffusion_models/ (" in msg
    (models / "text_encoders" / "vae_here.safetensors").write_bytes(
        (models / "vae" / "lgL_tiny_vae.safetensors").read_bytes())
    msg = failure(executor, "CLIPLoader", clip_name="vae_here.safetensors", type="stable_diffusion")
    assert "vae_here.safetensors: not a text encoder: the file holds a VAE: load it with VAELoader from vae/" in msg
    (models / "text_encoders" / "ckpt_here.safetensors").write_bytes(
        (models / "checkpoints" / "tiny_sd15.safetensors").read_bytes())
    msg = failure(executor, "CLIPLoader", clip_name="ckpt_here.safetensors", type="stable_diffusion")
    assert ("ckpt_here.safetensors: not a text encoder: the file holds a whole checkpoint (UNet, VAE and text "
            "encoders): load it with CheckpointLoaderSimple") in msg


def test_dual_clip_loader_refuses_other_types_and_pairs(executor, made):
    msg = failure(executor, "DualCLIPLoader", clip_name1="lgL_sdxl_l.safetensors", clip_name2="lgL_sdxl_g.safetensors",
                  type="flux")
    assert "DualCLIPLoader type 'flux' is not supported: latentgraph loads type sdxl only (CLIP-L and " \
           "OpenCLIP-bigG, in either order)" in msg
    msg = failure(executor, "DualCLIPLoader", clip_name1="lgL_sdxl_l.safetensors",
                  clip_name2="lgL_tiny_clip_l.safetensors", type="sdxl")
    assert ("DualCLIPLoader type sdxl needs one CLIP-L and one OpenCLIP-bigG text encoder; got "
            f"{made / 'text_encoders' / 'lgL_sdxl_l.safetensors'} (CLIP-L), "
            f"{made / 'text_encoders' / 'lgL_tiny_clip_l.safetensors'} (CLIP-L)") in msg


def test_unet_loader_refuses_what_is_not_a_unet(executor, models, tmp_path):
    (models / "diffusion_models" / "clip_here.safetensors").write_bytes(
        (models / "text_encoders" / "lgL_tiny_clip_l.safetensors").read_bytes())
    msg = failure(executor, "UNETLoader", unet_name="clip_here.safetensors", weight_dtype="default")
    assert ("clip_here.safetensors: not a UNet: no input_blocks.0.0.weight (LDM layout), "
            "model.diffusion_model.input_blocks.* or conv_in.weight with down_blocks.* (diffusers) (") in msg
    # without our record, the family comes from the context width: 32 is none
    sd = load_file(models / "diffusion_models" / "lgL_tiny_unet.safetensors")
    save_file(sd, str(models / "diffusion_models" / "no_record.safetensors"))
    msg = failure(executor, "UNETLoader", unet_name="no_record.safetensors", weight_dtype="fp8_e5m2")
    assert ("no_record.safetensors: a UNet with context width 32 and no label_emb is none of the families "
            "latentgraph knows (SD1.x: 768; SD2.x: 1024; SDXL: 2048 with label_emb 2816; SDXL refiner: 1280 with "
            "label_emb 2560; SD2.1-unCLIP: 1024 with label_emb 1536 or 2048)") in msg


def test_text_encoder_files_of_unknown_widths_or_cut_short_are_refused(tmp_path, models):
    sd = load_file(models / "text_encoders" / "lgL_tiny_clip_l.safetensors")
    save_file(sd, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match=r"bare\.safetensors: a text encoder 32 wide is none of CLIP-L \(768\), "
                                              r"OpenCLIP-H \(1024\) or OpenCLIP-bigG \(1280\)"):
        load_clip_files([tmp_path / "bare.safetensors"], "stable_diffusion")


def test_a_diffusers_folder_without_a_vae_is_refused(executor, made):
    import shutil

    shutil.copytree(made / "diffusers" / "sd15", made / "diffusers" / "no_vae")
    shutil.rmtree(made / "diffusers" / "no_vae" / "vae")
    msg = failure(executor, "DiffusersLoader", model_path="no_vae")
    assert "no_vae: not a diffusers folder latentgraph can load: no model file in vae/ (looked for " \
           "diffusion_pytorch_model[.fp16].safetensors/.bin and model[.fp16].safetensors / pytorch_model[.fp16].bin)" \
           in msg


def test_vae_loader_reads_a_diffusers_vae_file(executor, made):
    """sdxl-vae-fp16-fix and other VAEs are published as diffusers' diffusion_pytorch_model.safetensors."""
    (made / "vae" / "lgL_diffusers_vae.safetensors").write_bytes(
        (made / "diffusers" / "sd15" / "vae" / "diffusion_pytorch_model.safetensors").read_bytes())
    assert any(k.startswith("encoder.down_blocks.")
               for k in load_file(made / "vae" / "lgL_diffusers_vae.safetensors"))
    wf = Workflow()
    wf.add("ck", "CheckpointLoaderSimple", ckpt_name="lgL_sd15.safetensors")
    wf.add("vae", "VAELoader", vae_name="lgL_diffusers_vae.safetensors")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("a", "VAEDecode", samples="empty", vae="ck.2")
    wf.add("b", "VAEDecode", samples="empty", vae="vae.0")
    res = executor.run(wf, targets=["a", "b"])
    assert torch.equal(res.get("a"), res.get("b"))


# -- make-checkpoint -------------------------------------------------------------------------
def test_make_checkpoint_writes_split_files_of_the_checkpoints_weights(tmp_path, capsys):
    from latentgraph.cli import main as cli_main

    ck = tmp_path / "ck.safetensors"
    assert cli_main(["make-checkpoint", str(ck), "--family", "sdxl", "--seed", "4"]) == 0
    unet = tmp_path / "unet.safetensors"
    assert cli_main(["make-checkpoint", str(unet), "--kind", "unet", "--family", "sdxl", "--seed", "4",
                     "--layout", "diffusers"]) == 0
    assert "Stable Diffusion XL UNet (diffusers keys, tiny, eps-prediction, fp32)" in capsys.readouterr().out
    g = tmp_path / "g.safetensors"
    assert cli_main(["make-checkpoint", str(g), "--kind", "clip", "--family", "sdxl", "--seed", "4",
                     "--variant", "clip-g", "--layout", "openclip"]) == 0
    assert "OpenCLIP-bigG text encoder of Stable Diffusion XL (openclip keys, tiny, fp32)" in capsys.readouterr().out
    folder = tmp_path / "folder"
    assert cli_main(["make-checkpoint", str(folder), "--kind", "diffusers", "--family", "sd15", "--seed", "4"]) == 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sorted(p.relative_to(folder).as_posix() for p in files) == [
        "model_index.json", "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    total = sum(p.stat().st_size for p in files)  # the folder's size, not the directory entry's
    assert f", {total / 1e6:.1f} MB in " in capsys.readouterr().out and total > 1e5
    from latentgraph.models.checkpoint import load_checkpoint

    whole = load_checkpoint(ck)
    got, arch = load_unet_file(unet)
    assert arch.family == "sdxl" and all(torch.equal(v, whole.unet.state_dict()[k]) for k, v in got.state_dict().items())
    _, encoders = load_clip_files([g], "stable_diffusion")
    assert all(torch.equal(v, whole.text["g"].state_dict()[k]) for k, v in encoders["g"].state_dict().items())
    assert cli_main(["make-checkpoint", str(tmp_path / "x"), "--kind", "unet", "--family", "sd15",
                     "--layout", "openclip"]) != 0
    assert "--layout for --kind unet is ldm or diffusers, not openclip" in capsys.readouterr().err
    assert cli_main(["make-checkpoint", str(tmp_path / "x"), "--kind", "clip", "--family", "sd15",
                     "--variant", "clip-g"]) != 0
    assert "Stable Diffusion 1.x has no text encoder 'g'; it has l" in capsys.readouterr().err


def test_the_legacy_folder_names_are_listed_and_loaded(executor, models):
    """ComfyUI lists unet/ with diffusion_models/ and clip/ with text_encoders/."""
    (models / "unet").mkdir(exist_ok=True)
    (models / "clip").mkdir(exist_ok=True)
    (models / "unet" / "legacy_unet.safetensors").write_bytes(
        (models / "diffusion_models" / "lgL_tiny_unet.safetensors").read_bytes())
    (models / "clip" / "legacy_clip.safetensors").write_bytes(
        (models / "text_encoders" / "lgL_tiny_clip_l.safetensors").read_bytes())
    info = executor.registry.object_info(executor.env)
    assert "legacy_unet.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert "lgL_tiny_unet.safetensors" in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert "legacy_clip.safetensors" in info["DualCLIPLoader"]["input"]["required"]["clip_name2"][0]
    wf = Workflow()
    wf.add("unet", "UNETLoader", unet_name="legacy_unet.safetensors", weight_dtype="default")
    wf.add("clip", "CLIPLoader", clip_name="legacy_clip.safetensors", type="stable_diffusion")
    res = executor.run(wf, targets=["unet", "clip"])
    assert res.get("unet").arch.family == "sd15" and res.get("clip").arch.family == "sd15"


def test_ui_widgets_map_onto_the_loaders_inputs():
    """The widgets_values ComfyUI's frontend saves for these nodes (as in its templates: the
    anima template's UNETLoader and CLIPLoader, tests/fixtures/subgraphs/templates)."""
    from latentgraph.graph.ui_format import map_widgets

    registry = create_registry()
    assert map_widgets(registry.get("UNETLoader"), ["anima-preview3-base.safetensors", "default"]) == {
        "unet_name": "anima-preview3-base.safetensors", "weight_dtype": "default"}
    assert map_widgets(registry.get("CLIPLoader"), ["qwen_3_06b_base.safetensors", "stable_diffusion", "default"]) \
        == {"clip_name": "qwen_3_06b_base.safetensors", "type": "stable_diffusion", "device": "default"}
    assert map_widgets(registry.get("DualCLIPLoader"), ["l.safetensors", "g.safetensors", "sdxl", "cpu"]) == {
        "clip_name1": "l.safetensors", "clip_name2": "g.safetensors", "type": "sdxl", "device": "cpu"}
    assert map_widgets(registry.get("DiffusersLoader"), ["tiny/sdxl"]) == {"model_path": "tiny/sdxl"}


def test_the_vae_alone_decodes_as_comfyuis(executor):
    """The oracle's VAEDecode of its default latent (TinyVAELoader on the same VAE file), as the
    8-bit PNG its SaveImage wrote: latentgraph's decode of the same latent is within one level."""
    import numpy as np
    from PIL import Image

    from latentgraph.nodes.vae import VAEDecode

    latent = load_file(ORACLE / "split_loaders_ref.safetensors")["sample/default"]
    wf = Workflow()
    wf.add("vae", "VAELoader", vae_name="lgL_tiny_vae.safetensors")
    vae = executor.run(wf, targets=["vae"]).get("vae")
    pixels = (VAEDecode({"samples": latent}, vae)[0] * 255).round()
    theirs = torch.from_numpy(np.array(Image.open(ORACLE / "split_loaders_decoded.png").convert("RGB"))).float()
    assert pixels.shape == theirs.shape == (64, 64, 3)
    assert float((pixels - theirs).abs().max()) <= 1.0
    assert float(theirs.std()) > 10  # a picture, not a flat field


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "sdxl_refiner"])
def test_full_size_files_without_a_record_are_told_apart_by_their_keys(family):
    """The published layouts at full size (meta tensors: shapes only), in diffusers keys: the
    family and UNet config as the checkpoint loader reads them, each text encoder by its width."""
    from latentgraph.models.checkpoint import build_text_encoders
    from latentgraph.models.families import full_architecture
    from latentgraph.models.split_files import text_encoder_tensors, unet_architecture, unet_tensors
    from latentgraph.models.text_encoders import to_hf_clip_keys

    arch = full_architecture(family)
    with torch.device("meta"):
        unet = UNetModel(arch.unet)
        encoders = build_text_encoders(arch)
    ldm, _, layout = unet_tensors(ldm_unet_to_diffusers(unet), "x")
    found = unet_architecture(ldm, {}, "x")
    assert layout == "diffusers" and found.family == family and found.unet == arch.unet
    assert found.prediction == "eps"  # sd2's v is read from a norm's spread, which meta tensors do not have
    for name, enc in encoders.items():
        state = enc.state_dict()
        hf = to_hf_clip_keys(state, "text_model.")
        if "text_projection.weight" in state:
            hf["text_projection.weight"] = state["text_projection.weight"]
        got, config, _ = text_encoder_tensors(hf, {}, "x")
        assert (got, config) == (name, arch.text[name])
        if name == "h":  # diffusers' SD2 text_encoder: ViT-H without its last layer
            short = {k: v for k, v in hf.items() if ".layers.23." not in k}
            with pytest.raises(CheckpointError, match=r"x: OpenCLIP-H text encoder with 23 layers, expected 24; "
                                                      r"latentgraph reads only whole text encoders"):
                text_encoder_tensors(short, {}, "x")


def test_unet_loader_takes_the_unet_of_a_whole_checkpoint(executor, models):
    """As ComfyUI's UNETLoader: a checkpoint in diffusion_models/ gives its UNet (model.diffusion_model.*)."""
    (models / "diffusion_models" / "whole.safetensors").write_bytes(
        (models / "checkpoints" / "tiny_sd15.safetensors").read_bytes())
    whole = sampled(executor, CHECKPOINT, "ck.0", "ck.1", steps=2)
    assert torch.equal(sampled(executor, split("whole.safetensors"), steps=2), whole)
