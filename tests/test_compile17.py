"""--compile (models/compile.py): regional and full torch.compile of the UNet give the eager
result, compile once per UNet, leave patched blocks eager, and fail with a clear error."""

from __future__ import annotations

import pytest
import torch

from latentgraph.models.compile import CompileError, compile_unet, run_compiled
from latentgraph.models.unet import BasicTransformerBlock, ResBlock, UNetConfig, UNetModel

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1), context_dim=16)


def _unet(seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    return UNetModel(TINY).eval().requires_grad_(False)


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10.0, 700.0]),
            torch.randn(2, 5, 16, generator=gen))


@pytest.mark.parametrize("mode", ["regional", "full"])
def test_compiled_unet_gives_the_eager_result(mode):
    eager, compiled = _unet(), _unet()
    x, t, ctx = _inputs()
    with torch.inference_mode():
        want = eager(x, t, ctx)
        n = compile_unet(compiled, mode, backend="aot_eager")
        got = compiled(x, t, ctx)
        again = compiled(x, t, ctx)
    blocks = sum(isinstance(m, (ResBlock, BasicTransformerBlock)) for m in compiled.modules())
    assert n == (blocks if mode == "regional" else 1) and blocks == 15  # 8 ResBlocks, 7 transformer blocks
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch.equal(got, again)
    assert compile_unet(compiled, mode, backend="aot_eager") == 0  # once per UNet


def test_a_patched_model_keeps_its_patches_under_regional_compile():
    """Transformer blocks of a patched call run their eager patched path; the patch is called
    and the result matches the uncompiled patched UNet."""
    eager, compiled = _unet(), _unet()
    x, t, ctx = _inputs()
    calls = []

    def patch(n, extra):
        calls.append(extra["block"])
        return n * 0.5

    def options():
        return {"patches": {"attn1_output_patch": [patch]}}

    with torch.inference_mode():
        want = eager(x, t, ctx, None, None, options())
        seen = len(calls)
        compile_unet(compiled, "regional", backend="aot_eager")
        got = compiled(x, t, ctx, None, None, options())
    assert seen > 0 and len(calls) == 2 * seen
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_modes_are_checked():
    unet = _unet()
    with pytest.raises(ValueError, match="unknown compile mode 'fast'; choose one of off, regional, full"):
        compile_unet(unet, "fast")
    assert compile_unet(unet, "off") == 0 and not hasattr(unet, "_lg_compiled")
    compile_unet(unet, "regional", backend="aot_eager")
    with pytest.raises(CompileError, match=r"already compiled \(regional\); it cannot be compiled again as full"):
        compile_unet(unet, "full", backend="aot_eager")


def test_a_compiler_failure_is_a_clear_error():
    def broken_backend(gm, example_inputs):
        raise RuntimeError("no C++ compiler found")

    unet = _unet()
    compile_unet(unet, "full", backend=broken_backend)
    x, t, ctx = _inputs()
    with torch.inference_mode(), pytest.raises(CompileError) as exc:
        run_compiled(lambda: unet(x, t, ctx), "full")
    text = str(exc.value)
    assert text.startswith("--compile full: torch.compile failed (")
    assert "no C++ compiler found" in text and text.endswith("run without --compile, or with --compile regional "
                                                              "if this was full")
    with pytest.raises(ZeroDivisionError):  # anything else passes through untouched
        run_compiled(lambda: 1 / 0, "full")


@pytest.mark.slow
def test_inductor_regional_compile_of_a_tiny_unet():
    """The real compiler (inductor, C++ on the CPU): same result to fp32 rounding."""
    eager, compiled = _unet(), _unet()
    x, t, ctx = _inputs()
    with torch.inference_mode():
        want = eager(x, t, ctx)
        compile_unet(compiled, "regional")
        got = run_compiled(lambda: compiled(x, t, ctx), "regional")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_run_with_compile_gives_the_exact_picture(tmp_path, monkeypatch):
    """`latentgraph run --compile` on the demo: the UNet is compiled once (regional), and the
    picture is the uncompiled run's (aot_eager here: the same kernels, traced)."""
    import numpy as np
    from PIL import Image

    from latentgraph import cli
    from latentgraph.models import compile as compile_mod

    monkeypatch.setattr(compile_mod, "BACKEND", "aot_eager")
    seen = []
    real = compile_mod.compile_unet
    monkeypatch.setattr(compile_mod, "compile_unet", lambda unet, mode, device=None: seen.append(
        (mode, real(unet, mode, device))))
    pictures = []
    for flags in ([], ["--compile"]):
        out = tmp_path / ("compiled" if flags else "eager")
        assert cli.main(["run", "workflows/txt2img.yaml", "--output-dir", str(out), "--device", "cpu", *flags]) == 0
        pictures.append(np.asarray(Image.open(out / "txt2img_00001_.png")).astype(int))
    assert seen[0][0] == "regional" and seen[0][1] > 0 and all(n == 0 for _, n in seen[1:])
    assert len(seen) == 20 * 1  # one call per step (cfg batch in one), 20 euler steps
    assert np.abs(pictures[0] - pictures[1]).max() <= 1


def _demo_with(tmp_path, extra_nodes: str, model_ref: str, name: str):
    """The demo txt2img (4 steps) with ``extra_nodes`` between the checkpoint and the sampler."""
    import numpy as np
    from PIL import Image

    from latentgraph import cli

    wf = tmp_path / f"{name}.yaml"
    wf.write_text(f"""nodes:
  ckpt:     {{type: CheckpointLoaderSimple, ckpt_name: latentgraph-shapes.safetensors}}
{extra_nodes}
  positive: {{type: CLIPTextEncode, clip: ckpt.CLIP, text: "a red circle on a blue background"}}
  negative: {{type: CLIPTextEncode, clip: ckpt.CLIP, text: ""}}
  latent:   {{type: EmptyLatentImage, width: 64, height: 64, batch_size: 1}}
  sampler:  {{type: KSampler, model: {model_ref}, positive: positive, negative: negative, latent_image: latent,
             seed: 42, steps: 4, cfg: 5.0, sampler_name: euler, scheduler: normal, denoise: 1.0}}
  decode:   {{type: VAEDecode, samples: sampler, vae: ckpt.VAE}}
  save:     {{type: SaveImage, images: decode, filename_prefix: {name}}}
""")
    code = cli.main(["run", str(wf), "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    png = tmp_path / "out" / f"{name}_00001_.png"
    return code, (np.asarray(Image.open(png)).astype(int) if png.exists() else None)


def test_torch_compile_model_node(tmp_path, monkeypatch):
    """ComfyUI's TorchCompileModel: the picture of the uncompiled model, the whole UNet
    compiled once, apart from the module (no new state-dict keys)."""
    import numpy as np

    from latentgraph.models import compile as compile_mod

    monkeypatch.setattr(compile_mod, "BACKEND", "aot_eager")
    made = []
    real = compile_mod.compiled_module
    monkeypatch.setattr(compile_mod, "compiled_module", lambda unet, backend: made.append(
        (backend, len(unet.state_dict()), "_lg_node_compiled" in unet.__dict__)) or real(unet, backend))
    code, plain = _demo_with(tmp_path, "", "ckpt.MODEL", "plain")
    assert code == 0 and made == []
    code, compiled = _demo_with(tmp_path, "  tc: {type: TorchCompileModel, model: ckpt.MODEL, backend: inductor}",
                                "tc", "compiled")
    assert code == 0 and len(made) == 4  # one UNet call per step
    assert made[0][0] == "inductor" and made[0][2] is False and all(m[2] for m in made[1:])
    assert len({m[1] for m in made}) == 1  # the compiled wrapper adds no state-dict keys
    assert np.abs(plain - compiled).max() <= 1


def test_torch_compile_model_errors(tmp_path, monkeypatch, capsys):
    from latentgraph.models import compile as compile_mod

    code, _ = _demo_with(tmp_path, "  tc: {type: TorchCompileModel, model: ckpt.MODEL, backend: cudagraphs}",
                         "tc", "graphs")
    assert code == 1
    assert "backend 'cudagraphs' needs a CUDA device; this model runs on cpu" in capsys.readouterr().err

    def broken_backend(gm, example_inputs):
        raise RuntimeError("the C++ compiler crashed")

    monkeypatch.setattr(compile_mod, "BACKEND", broken_backend)
    code, _ = _demo_with(tmp_path, "  tc: {type: TorchCompileModel, model: ckpt.MODEL, backend: inductor}",
                         "tc", "broken")
    err = capsys.readouterr().err
    assert code == 1
    assert ("TorchCompileModel (backend inductor): torch.compile failed (RuntimeError: the C++ compiler crashed); "
            "bypass the TorchCompileModel node") in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("mode", ["regional", "full"])
def test_compile_on_cuda_fp16(mode):
    """On a GPU in fp16 (full: with CUDA graphs), the compiled UNet gives eager's result."""
    eager, compiled = _unet().cuda().half(), _unet().cuda().half()
    x, t, ctx = (v.cuda() for v in _inputs())
    with torch.inference_mode():
        want = eager(x.half(), t, ctx.half())
        compile_unet(compiled, mode, torch.device("cuda"))
        for _ in range(3):  # CUDA graphs record on the first calls, replay after
            got = run_compiled(lambda: compiled(x.half(), t, ctx.half()).clone(), mode)
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
