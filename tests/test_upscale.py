"""Upscale models through spandrel: loading (safe reader, refusals, architectures), ComfyUI's
tiling and blending, the tile budget, progress per tile, and parity with ComfyUI 0.3.64 on a tiny
random 4x ESRGAN (tests/fixtures/comfy_reference/upscale/README.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.errors import CheckpointError
from latentgraph.models.upscale import (TINY_UPSCALE_VARIANTS, load_upscale_model_file, load_upscale_state_dict,
                                        make_tiny_upscale_state_dict, pick_tile, tile_bytes, tile_steps,
                                        tiled_upscale, upscale_image)
from latentgraph.nodes import create_registry
from latentgraph.nodes.upscale import choose_tile
from conftest import FIXTURES

UP = FIXTURES / "comfy_reference" / "upscale"
MODEL = "lg_tiny_esrgan_4x.safetensors"
PICTURE = "lg_upscale_input.png"


def _image(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255)[None]


def _png8(image: torch.Tensor) -> np.ndarray:
    """ComfyUI's SaveImage quantisation: clip(255 * x, 0, 255) cast to uint8."""
    return np.clip(255.0 * image[0].numpy(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale")
    (root / "models" / "upscale_models").mkdir(parents=True)
    (root / "in").mkdir()
    shutil.copy(UP / MODEL, root / "models" / "upscale_models" / MODEL)
    shutil.copy(UP / PICTURE, root / "in" / PICTURE)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


# -- parity with ComfyUI -------------------------------------------------------------------------
def test_committed_model_is_the_seeded_tiny_esrgan():
    from safetensors.torch import load_file

    sd = make_tiny_upscale_state_dict("esrgan", 0)
    ref = load_file(UP / MODEL)
    assert sorted(sd) == sorted(ref) and all(torch.equal(sd[k], ref[k]) for k in sd)


def test_api_prompt_matches_comfyui_png_exactly(executor):
    """The prompt ComfyUI ran (two 512-wide tiles: the image is 520 x 48), through our executor:
    the saved 8-bit pixels equal ComfyUI's byte for byte."""
    prompt = json.loads((UP / "prompt_upscale.json").read_text())
    events = []
    res = executor.run(prompt, listener=lambda kind, data: events.append((kind, data)))
    saved = res.outputs["4"]["images"][0]
    ours = np.asarray(Image.open(executor.env.output_dir / saved["subfolder"] / saved["filename"]))
    ref = np.asarray(Image.open(UP / "oracle_esrgan4x.png"))
    assert ours.shape == ref.shape == (192, 2080, 3)
    assert np.array_equal(ours, ref)
    progress = [(d["value"], d["max"]) for k, d in events if k == "progress" and d["node"] == "3"]
    assert progress == [(1, 2), (2, 2)]


def test_reference_depends_on_tiling():
    """One 1024 tile gives other seam pixels: the parity above compares the blending too."""
    desc = load_upscale_model_file(UP / MODEL)
    ref = np.asarray(Image.open(UP / "oracle_esrgan4x.png")).astype(int)
    whole = _png8(upscale_image(desc, _image(UP / PICTURE), torch.device("cpu"), tile=1024)).astype(int)
    diff = np.abs(whole - ref)
    assert diff.max() == 1 and (diff > 0).sum() > 100
    # the differences sit in the blended band (input x 480..512 -> output 1920..2048); elsewhere
    # only a rare 8-bit rounding flip (the convolutions sum in another order on another size)
    band = (diff[:, 1920:2048] > 0).sum()
    assert band > 100 and (diff > 0).sum() - band < 10


def test_object_info_is_comfyuis_with_the_folder_listed(executor):
    """Inputs, outputs, categories and display names as ComfyUI 0.3.64's /object_info; the combo
    lists models/upscale_models."""
    info = executor.registry.object_info(executor.env)
    loader, up = info["UpscaleModelLoader"], info["ImageUpscaleWithModel"]
    assert loader["input"]["required"] == {"model_name": [[MODEL], {}]}
    assert (loader["output"], loader["category"], loader["display_name"]) == (["UPSCALE_MODEL"], "loaders",
                                                                              "Load Upscale Model")
    assert up["input_order"] == {"required": ["upscale_model", "image"]}
    assert up["input"]["required"]["upscale_model"][0] == "UPSCALE_MODEL" and up["input"]["required"]["image"][0] == "IMAGE"
    assert (up["output"], up["category"], up["display_name"]) == (["IMAGE"], "image/upscaling",
                                                                  "Upscale Image (using Model)")


# -- tiling ----------------------------------------------------------------------------------------
def test_tile_steps_and_positions_follow_comfyui():
    assert tile_steps(520, 48, 512, 32) == 2
    assert tile_steps(512, 512, 512, 32) == 1
    assert tile_steps(1024, 1024, 512, 32) == 9  # ceil((1024-32)/480) = 3 per axis
    assert tile_steps(2000, 100, 256, 16) == 9


def test_tiled_identity_is_exact_and_each_tile_is_small():
    """A 2x nearest 'model' tiled is the same as untiled (weights sum out), and no tile is
    bigger than the tile size: 1024 x 1024 input in 512 tiles never runs a 1024 call."""
    seen = []

    def fn(x):
        seen.append(tuple(x.shape[-2:]))
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    x = torch.rand(2, 3, 1024, 700)
    out = tiled_upscale(fn, x, 2, 3, tile=512, overlap=32)
    assert torch.allclose(out, x.repeat_interleave(2, -1).repeat_interleave(2, -2), atol=1e-6)
    assert len(seen) == 2 * tile_steps(700, 1024, 512, 32) == 2 * 6
    assert max(h for h, _ in seen) == 512 and max(w for _, w in seen) == 512
    assert sorted(set(seen)) == [(64, 220), (64, 512), (512, 220), (512, 512)]


def test_blend_weights_are_comfyuis_linear_ramp():
    """Tile 0 says 0, tile 1 says 1: across the overlap (32 input px = 64 output px at 2x) the
    result is the ramp w1 / (w0 + w1) with w = (t+1)/64 from each tile's edge."""
    def fn(x):
        value = 0.0 if fn.calls == 0 else 1.0
        fn.calls += 1
        return torch.full((1, 1, x.shape[2] * 2, x.shape[3] * 2), value)
    fn.calls = 0
    out = tiled_upscale(fn, torch.zeros(1, 1, 8, 100), 2, 1, tile=64, overlap=32)[0, 0, 0]
    # tile 1 starts at input 32 = output 64; tile 0 ends at input 64 = output 128
    assert float(out[:64].abs().max()) == 0.0 and float(out[128:].min()) == 1.0
    t = torch.arange(64, dtype=torch.float32)
    w1, w0 = (t + 1) / 64, (64 - t) / 64
    assert torch.allclose(out[64:128], w1 / (w0 + w1), atol=1e-6)


def test_pick_tile_halves_within_the_budget():
    assert tile_bytes(512, 4) == 512 * 512 * 3 * 4 * 4 * 384  # ComfyUI's estimate, 4.5 GiB
    assert pick_tile(4, 8 * 2**30) == 512
    assert pick_tile(4, tile_bytes(512, 4) - 1) == 256
    assert pick_tile(4, tile_bytes(128, 4)) == 128
    assert pick_tile(4, tile_bytes(128, 4) - 1) is None
    assert pick_tile(1, 8 * 2**30) == 512 and pick_tile(8, 8 * 2**30) == 256


def test_choose_tile_error_names_the_limit():
    desc = load_upscale_model_file(UP / MODEL)
    assert choose_tile(desc, torch.zeros(1, 8, 8, 3), 8 * 2**30) == 512
    with pytest.raises(ValueError) as err:
        choose_tile(desc, torch.zeros(1, 8, 8, 3), 2**20)
    assert str(err.value) == ("upscaling with a 4x model needs about 288 MiB for even a 128 x 128 tile, which "
                              "exceeds the memory budget of 1 MiB (the limit tensor_bytes = 8 GiB, and free "
                              "device memory)")


def test_output_budget_is_checked_before_running():
    from latentgraph.nodes.upscale import _check_sizes

    desc = load_upscale_model_file(UP / MODEL)
    huge = torch.zeros(1, 1, 1, 3).expand(8, 4096, 4096, 3)  # a view: no memory behind it
    with pytest.raises(ValueError) as err:
        _check_sizes(desc, huge)
    assert str(err.value) == ("upscaling an image batch of 8 x 4096 x 4096 by 4x makes an image of 24 GiB, which "
                              "exceeds the limit tensor_bytes = 8 GiB")


def test_channel_mismatch_is_named():
    from latentgraph.nodes.upscale import _check_sizes

    desc = load_upscale_model_file(UP / MODEL)
    with pytest.raises(ValueError, match=r"^input 'image' has 4 channels but the ESRGAN upscale model takes "
                                         r"3-channel images$"):
        _check_sizes(desc, torch.zeros(1, 8, 8, 4))


# -- loading -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,arch,scale", [("esrgan", "ESRGAN", 4), ("compact", "RealESRGAN Compact", 2),
                                                ("swinir", "SwinIR", 2)])
def test_tiny_architectures_load_and_upscale(tmp_path, variant, arch, scale):
    path = tmp_path / f"{variant}.safetensors"
    save_file(make_tiny_upscale_state_dict(variant, 1), path)
    desc = load_upscale_model_file(path)
    assert desc.architecture.name == arch and desc.scale == scale
    out = upscale_image(desc, torch.rand(1, 20, 28, 3), torch.device("cpu"))
    assert out.shape == (1, 20 * scale, 28 * scale, 3) and out.dtype == torch.float32
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0 and float(out.std()) > 1e-3
    assert set(TINY_UPSCALE_VARIANTS) == {"esrgan", "compact", "swinir"}


def test_dataparallel_prefix_is_stripped_for_swinir():
    sd = make_tiny_upscale_state_dict("swinir", 0)
    wrapped = {"module." + k: v for k, v in sd.items()}
    x = torch.rand(1, 3, 16, 16)
    a, b = load_upscale_state_dict(sd, "a"), load_upscale_state_dict(wrapped, "b")
    assert b.architecture.name == "SwinIR" and torch.equal(a(x), b(x))


def test_pickled_pth_is_read_with_weights_only(tmp_path):
    sd = make_tiny_upscale_state_dict("compact", 0)
    torch.save(sd, tmp_path / "plain.pth")
    assert load_upscale_model_file(tmp_path / "plain.pth").architecture.name == "RealESRGAN Compact"


def test_basicsr_params_ema_wrapper_is_unwrapped(tmp_path):
    """RealESRGAN_x4plus.pth as published: {"params_ema": {...}}; the EMA weights are the ones used."""
    ema = make_tiny_upscale_state_dict("esrgan", 2)
    plain = make_tiny_upscale_state_dict("esrgan", 3)
    torch.save({"params": plain, "params_ema": ema}, tmp_path / "RealESRGAN_x4plus.pth")
    torch.save({"params": plain}, tmp_path / "params.pth")
    x = torch.rand(1, 3, 12, 12)
    want_ema, want_plain = load_upscale_state_dict(ema, "e")(x), load_upscale_state_dict(plain, "p")(x)
    assert torch.equal(load_upscale_model_file(tmp_path / "RealESRGAN_x4plus.pth")(x), want_ema)
    assert torch.equal(load_upscale_model_file(tmp_path / "params.pth")(x), want_plain)
    assert not torch.equal(want_ema, want_plain)


def test_pickled_objects_are_refused_as_for_checkpoints(tmp_path):
    import argparse

    torch.save({"params": argparse.Namespace(x=1)}, tmp_path / "evil.pth")  # any non-tensor global
    with pytest.raises(CheckpointError) as err:
        load_upscale_model_file(tmp_path / "evil.pth")
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'evil.pth'}: refused: the file needs Python objects that are not plain "
                          f"tensors to load")
    assert "convert them to .safetensors to use them here." in msg


def test_unknown_and_empty_files_are_named(tmp_path):
    save_file({"foo.weight": torch.zeros(2, 2)}, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"x\.safetensors: not an upscale model of an architecture spandrel "
                                              r"0\.4\.\d+ knows \(1 tensors, first keys: foo\.weight\)$"):
        load_upscale_model_file(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"holds no tensors, so it is not an upscale model$"):
        load_upscale_state_dict({}, "empty.pth")


def test_misshapen_known_architecture_is_named():
    sd = make_tiny_upscale_state_dict("esrgan", 0)
    sd["model.0.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(CheckpointError) as err:
        load_upscale_state_dict(sd, "bad.pth")
    assert str(err.value).startswith("bad.pth: looks like an upscale model but does not load (RuntimeError: "
                                     "Error(s) in loading state_dict for RRDBNet: size mismatch for model.0.weight: "
                                     "copying a param with shape torch.Size([8, 3, 5, 5])")


def test_models_that_are_not_single_image_are_refused_naming_the_architecture(monkeypatch):
    """spandrel also loads inpainting models (MaskedImageModelDescriptor: LaMa, MAT): refused as
    ComfyUI does, but with the architecture named (a stand-in descriptor: a real LaMa is 200 MB)."""
    import types

    import spandrel

    class Masked:  # not an ImageModelDescriptor
        architecture = types.SimpleNamespace(name="LaMa")

    monkeypatch.setattr(spandrel.ModelLoader, "load_from_state_dict", lambda self, sd: Masked())
    with pytest.raises(CheckpointError) as err:
        load_upscale_state_dict({"x": torch.zeros(1)}, "big-lama.pt")
    assert str(err.value) == ("big-lama.pt: is a LaMa model (Masked, e.g. inpainting), not a single-image upscale "
                              "model; ImageUpscaleWithModel takes only single-image models")


def test_missing_model_is_a_validation_error(executor):
    from latentgraph.graph.errors import ValidationError

    wf = Workflow()
    wf.add("m", "UpscaleModelLoader", model_name="nope.pth")
    wf.add("i", "LoadImage", image=PICTURE)
    wf.add("u", "ImageUpscaleWithModel", upscale_model="m", image="i.IMAGE")
    wf.add("s", "SaveImage", images="u", filename_prefix="x")
    with pytest.raises(ValidationError) as err:
        executor.run(wf)
    assert "upscale model 'nope.pth' not found (searched: " in str(err.value)
