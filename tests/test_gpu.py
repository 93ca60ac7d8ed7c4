"""On a CUDA device: auto dtypes, parity with the CPU in fp32 and close in fp16/bf16, and the
low-memory mode moving weights in and out. Run with -m gpu."""

from __future__ import annotations

import pytest
import torch

from latentgraph.models.checkpoint import load_placed
from latentgraph.models.clip import TextModel
from latentgraph.models.families import sdxl_adm
from latentgraph.models.latent import decode_latent
from latentgraph.models.make import make_checkpoint
from latentgraph.models.management import ModelCache, Placement

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu")
    return {f: make_checkpoint(folder / f"{f}.safetensors", f, "tiny", seed=1) and folder / f"{f}.safetensors"
            for f in ("sd15", "sdxl")}


def run_once(ck, text: TextModel, device) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    cond, pooled = text.encode("a red circle on a (blue:1.2) background")
    y = sdxl_adm(pooled, 128, 128).repeat(2, 1) if ck.arch.family == "sdxl" else None
    dtype = next(ck.unet.parameters()).dtype
    with torch.no_grad():
        out = ck.unet(x.to(device, dtype), torch.tensor([999.0, 500.0], device=device),
                      cond.repeat(2, 1, 1).to(device, dtype), None if y is None else y.to(device, dtype))
    image = decode_latent(ck.vae, x[:1], text.placement)
    return out.float().cpu(), cond, image


def test_auto_dtypes_on_cuda():
    p = Placement.from_options("cuda", "auto")
    assert p.device.type == "cuda"
    assert p.dtypes["unet"] == torch.float16 and p.dtypes["text"] == torch.float16
    assert p.dtypes["vae"] == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_cuda_matches_cpu(files, family):
    cpu = Placement()
    ck = load_placed(files[family], cpu)
    ref_out, ref_cond, ref_image = run_once(ck, TextModel(ck.arch, ck.text, cpu), "cpu")
    fp32 = Placement.from_options("cuda", "fp32")
    ck32 = load_placed(files[family], fp32)
    out, cond, image = run_once(ck32, TextModel(ck32.arch, ck32.text, fp32), "cuda")
    # cuDNN runs fp32 convolutions in TF32 by default (ComfyUI leaves that on too): ~1e-3 apart
    assert (out - ref_out).abs().max() < 5e-3 and (cond - ref_cond).abs().max() < 1e-3
    assert (image - ref_image).abs().max() < 5e-3
    auto = Placement.from_options("cuda", "auto")
    ck16 = load_placed(files[family], auto)
    assert next(ck16.unet.parameters()).dtype == torch.float16
    out16, cond16, image16 = run_once(ck16, TextModel(ck16.arch, ck16.text, auto), "cuda")
    scale = ref_out.abs().max()
    assert torch.isfinite(out16).all() and (out16 - ref_out).abs().max() < 2e-2 * scale
    assert (cond16 - ref_cond).abs().max() < 5e-2 * ref_cond.abs().max()
    assert (image16 - ref_image).abs().max() < 5e-2


def test_lowvram_keeps_weights_on_the_cpu_between_uses(files):
    p = Placement.from_options("cuda", "fp32", lowvram=True)
    assert p.offload and p.home.type == "cpu"
    cache = ModelCache()
    ck = load_placed(files["sd15"], p, cache)
    assert next(ck.unet.parameters()).device.type == "cpu"
    with p.use(ck.unet):
        assert next(ck.unet.parameters()).device.type == "cuda"
        x = torch.randn(1, 4, 8, 8, device="cuda")
        with torch.no_grad():
            out = ck.unet(x, torch.tensor([10.0], device="cuda"), torch.randn(1, 77, 32, device="cuda"))
        assert out.device.type == "cuda"
    assert next(ck.unet.parameters()).device.type == "cpu"
    cond, _ = TextModel(ck.arch, ck.text, p).encode("a red circle")
    assert cond.device.type == "cpu" and next(ck.text["l"].parameters()).device.type == "cpu"
    assert load_placed(files["sd15"], p, cache) is ck


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_sde"])
def test_stochastic_samplers_give_the_same_latent_on_cuda_and_cpu(tmp_path, sampler):
    """Step noise is drawn on the CPU from the seed, so the device does not change the result
    (beyond TF32 rounding)."""
    from latentgraph.graph import Environment, Executor, Workflow
    from latentgraph.nodes import create_registry, create_services

    make_checkpoint(tmp_path / "models" / "checkpoints" / "t.safetensors", "sd15", "tiny", seed=1)
    outs = []
    for device in ("cpu", "cuda"):
        env = Environment(output_dir=tmp_path / "o", input_dir=tmp_path, temp_dir=tmp_path / "t",
                          models_dir=tmp_path / "models", device=device, dtype="fp32")
        ex = Executor(create_registry(), env, services=create_services(env))
        wf = Workflow()
        ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="t.safetensors")
        wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
        wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
        wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=2)
        wf.add("k", "KSampler", model=ck.MODEL, seed=42, steps=6, cfg=5.0, sampler_name=sampler, scheduler="normal",
               positive="pos", negative="neg", latent_image="empty", denoise=1.0)
        outs.append(ex.run(wf, targets=["k"]).get("k")["samples"])
    scale = outs[0].abs().max()
    assert (outs[0] - outs[1]).abs().max() < 1e-3 * scale
