"""Full-size ControlNet picture check against ComfyUI 0.3.64 (slow, ~4 GB of memory).

A random full-size SD1.5 checkpoint and a random full-size SD1.5 ControlNet are regenerated from
their seeds by ``latentgraph make-checkpoint`` (their sha256 is checked first, so a changed
generator is caught before a PSNR is blamed), the committed API prompt is run, and the decoded
8-bit picture and the latent are compared with what ComfyUI made from the same files
(tests/fixtures/comfy_reference/controlnet_full/README.md)."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from latentgraph.cli import main as cli_main
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry
from conftest import FIXTURES

HERE = FIXTURES / "comfy_reference" / "controlnet_full"
CKPT = "lg_c_sd15_full_s1.safetensors"
CONTROLNET = "lg_c_cn_sd15_full_s2.safetensors"
# make-checkpoint arguments and the sha256 of the files they wrote when the reference was made
FILES = {
    CKPT: (["--family", "sd15", "--size", "full", "--seed", "1"], "checkpoints",
           "ce11f52af1daf1e0730386c57dbfa8eaf7afc8289993056ed3aa0d535c8c0d69"),
    CONTROLNET: (["--kind", "controlnet", "--family", "sd15", "--size", "full", "--seed", "2"], "controlnet",
                 "d137465ceefc0f38030f4b71682a4e3046e786bbc6ac8fa8fe90d4e7b5830ed4"),
}
MIN_PSNR_DB = 40.0
LATENT_REL_TOL = 1e-4  # of the reference latent's largest magnitude (issue 15)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 pictures of one shape (inf when equal)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.uint8, (a.shape, b.shape)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def run_prompt(executor: Executor, prompt_file: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Run a committed API prompt: (the latent that its SaveLatent gets, its SaveImage PNG).
    latentgraph has no SaveLatent node, so that node is dropped and its source read instead."""
    prompt = json.loads(prompt_file.read_text())
    (saver,) = [nid for nid, n in prompt.items() if n["class_type"] == "SaveLatent"]
    (image_node,) = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
    sampler, _ = prompt.pop(saver)["inputs"]["samples"]
    result = executor.run(Workflow.from_api(prompt, source=str(prompt_file)), targets=[sampler, image_node])
    pngs = [Path(img["subfolder"]) / img["filename"] for img in result.outputs[image_node]["images"]]
    (png,) = pngs
    picture = np.asarray(Image.open(executor.env.output_dir / png).convert("RGB"))
    return result.get(sampler)["samples"], picture


def oracle(name: str) -> tuple[torch.Tensor, np.ndarray]:
    latent = load_file(HERE / f"{name}.latent")["latent_tensor"]
    return latent, np.asarray(Image.open(HERE / f"{name}.png").convert("RGB"))


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_full")
    for name, (args, folder, digest) in FILES.items():
        out = root / "models" / folder / name
        out.parent.mkdir(parents=True, exist_ok=True)
        assert cli_main(["make-checkpoint", *args, str(out)]) == 0
        assert sha256(out) == digest, f"make-checkpoint {' '.join(args)} no longer writes the reference file"
    (root / "in").mkdir()
    shutil.copy(HERE / "cn_full_hint.png", root / "in")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu", dtype="fp32")
    yield Executor(create_registry(), env)
    # pytest keeps the last few tmp folders: do not leave 2.8 GB of weights in each
    shutil.rmtree(root / "models")


def test_psnr_is_a_decibel_measure():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy()
    b[0, 0, 0] = 255  # mse = 255² / 48
    assert psnr(a, a) == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(48))


def test_full_size_controlnet_picture_matches_comfyui(executor):
    latent, picture = run_prompt(executor, HERE / "cn_full_prompt.json")
    ref_latent, ref_picture = oracle("comfyui_control")
    assert picture.shape == (256, 256, 3)
    assert psnr(picture, ref_picture) >= MIN_PSNR_DB
    assert latent.shape == ref_latent.shape == (1, 4, 32, 32)
    assert float((latent - ref_latent).abs().max() / ref_latent.abs().max()) < LATENT_REL_TOL


def test_the_control_is_what_changes_the_picture(executor):
    """Strength 0 is the plain graph, which matches ComfyUI's plain graph, and the ControlNet
    changes ComfyUI's picture far past the 40 dB bar (28.0 dB between them when measured): a
    latentgraph that dropped the control would fail the check above."""
    latent0, strength0 = run_prompt(executor, HERE / "cn_full_strength0_prompt.json")
    plain_latent, plain = run_prompt(executor, HERE / "cn_full_plain_prompt.json")
    ref_plain_latent, ref_plain = oracle("comfyui_plain")
    ref_control_latent, ref_control = oracle("comfyui_control")
    assert torch.equal(latent0, plain_latent) and np.array_equal(strength0, plain)
    assert psnr(plain, ref_plain) >= MIN_PSNR_DB
    assert float((plain_latent - ref_plain_latent).abs().max() / ref_plain_latent.abs().max()) < LATENT_REL_TOL
    assert psnr(ref_plain, ref_control) < 30.0
    assert float((ref_control_latent - ref_plain_latent).abs().mean() / ref_plain_latent.abs().mean()) > 0.1
