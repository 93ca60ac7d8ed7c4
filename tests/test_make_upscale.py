"""`latentgraph make-checkpoint --kind upscale_model [--variant esrgan|compact|swinir]`: the file
is the tiny random spandrel model of models/upscale.py, UpscaleModelLoader loads it, spandrel
detects its architecture, and it upscales; bad flag combinations are named errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.cli import main
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.upscale import make_tiny_upscale_state_dict
from latentgraph.nodes import create_registry


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("make_upscale")
    folder = root / "models" / "upscale_models"
    folder.mkdir(parents=True)
    for variant in ("esrgan", "compact", "swinir"):
        assert main(["make-checkpoint", str(folder / f"{variant}.safetensors"), "--kind", "upscale_model",
                     "--variant", variant, "--seed", "3"]) == 0
    assert main(["make-checkpoint", str(folder / "default16.safetensors"), "--kind", "upscale_model",
                 "--dtype", "fp16"]) == 0
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return folder, env


@pytest.mark.parametrize("variant,arch,scale", [("esrgan", "ESRGAN", 4), ("compact", "RealESRGAN Compact", 2),
                                                ("swinir", "SwinIR", 2)])
def test_the_file_loads_and_upscales(made, variant, arch, scale):
    folder, env = made
    want = make_tiny_upscale_state_dict(variant, 3)
    got = load_file(str(folder / f"{variant}.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    wf = Workflow()
    wf.add("m", "UpscaleModelLoader", model_name=f"{variant}.safetensors")
    run = Executor(create_registry(), env).run(wf, targets=["m"])
    desc = run.get("m")
    assert desc.architecture.name == arch and desc.scale == scale
    out = desc(torch.rand(1, 3, 12, 10))
    assert out.shape == (1, 3, 12 * scale, 10 * scale)


def test_default_variant_and_dtype(made):
    folder, _ = made
    got = load_file(str(folder / "default16.safetensors"))
    want = make_tiny_upscale_state_dict("esrgan", 0)
    assert {v.dtype for v in got.values()} == {torch.float16}
    assert all(torch.equal(got[k], want[k].half()) for k in want)


@pytest.mark.parametrize("args,message", [
    (["--family", "sd15"],
     "--family is not for --kind upscale_model: an upscale model works on pixels, for any family"),
    (["--variant", "vit-l"], "--variant vit-l is not an upscale model; choose one of esrgan, compact, swinir"),
    (["--size", "full"], "--kind upscale_model is made in --size tiny only"),
    (["--prediction", "v"], "--prediction is for checkpoints; an upscale model has none"),
])
def test_bad_flags_are_named(tmp_path, capsys, args, message):
    out = tmp_path / "x.safetensors"
    assert main(["make-checkpoint", str(out), "--kind", "upscale_model", *args]) == 1
    assert capsys.readouterr().err.strip() == f"latentgraph make-checkpoint: {message}"
    assert not out.exists()


def test_other_kinds_still_need_a_family(tmp_path, capsys):
    assert main(["make-checkpoint", str(tmp_path / "x.safetensors")]) == 1
    assert capsys.readouterr().err.strip() == "latentgraph make-checkpoint: --family is required for --kind checkpoint"
