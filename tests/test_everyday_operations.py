"""ComfyUI's experimental latent operations (latentgraph/nodes/latent_operations.py) against
ComfyUI 0.3.64: applied to a latent, and during sampling through LatentApplyOperationCFG on the
tiny SD1 model (tests/fixtures/comfy_reference/everyday/latent_operations_prompt.json)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Environment, Executor
from latentgraph.nodes import create_registry
from latentgraph.nodes.latent_operations import sharpen_latent, tonemap_reinhard
from conftest import FIXTURES
from parity import as_latentgraph, saved_latents, tiny_env

REF = FIXTURES / "comfy_reference" / "everyday"
PROMPT = json.loads((REF / "latent_operations_prompt.json").read_text())
LATENTS = load_file(str(REF / "latent_operations_ref.safetensors"))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The prompt run here (TinyCheckpointLoader as CheckpointLoaderSimple): {prefix: latent}."""
    env = tiny_env(tmp_path_factory.mktemp("latent_operations"))
    shutil.copy(REF / "lgI_a.latent", env.input_dir / "lgI_a.latent")
    prompt = as_latentgraph(PROMPT)
    return saved_latents(env, Executor(create_registry(), env).run(prompt), prompt)


@pytest.mark.parametrize("name", ["op_a_tone", "op_a_sharp", "op_k_tone", "op_k_sharp"])
def test_operation_matches_comfyui(name, saved):
    assert sorted(saved) == sorted(LATENTS)
    out, ref = saved[name], LATENTS[name]
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"


def test_operations_change_lengths_not_directions():
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    toned = tonemap_reinhard(x, 1.0)
    cos = torch.nn.functional.cosine_similarity(toned, x, dim=1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)
    assert (torch.linalg.vector_norm(toned, dim=1) < torch.linalg.vector_norm(x, dim=1)).all()
    # alpha 0: the kernel is the identity, so sharpening returns the latent (up to the 1e-6 guard)
    assert torch.allclose(sharpen_latent(x, 2, 1.0, 0.0), x, atol=1e-5)
    # a latent smaller than the radius is padded by repetition instead of failing
    assert sharpen_latent(torch.randn(1, 4, 2, 2), 9, 1.0, 0.1).shape == (1, 4, 2, 2)


# ---- ImageStitch (latentgraph/nodes/stitch.py) ----

STITCH_PROMPT = json.loads((REF / "stitch_prompt.json").read_text())
STITCH = load_file(str(REF / "stitch_ref.safetensors"))


@pytest.fixture(scope="module")
def stitched(tmp_path_factory):
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("stitch")
    (root / "in").mkdir()
    for name in ("lgI_img.png", "lgI_img2.png"):
        shutil.copy(REF / name, root / "in" / name)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    run = Executor(create_registry(), env).run(STITCH_PROMPT)
    return {n["inputs"]["filename_prefix"].split("/")[1]:
            torch.from_numpy(np.stack([np.asarray(Image.open(env.output_dir / "lgI_everyday" / e["filename"]))
                                       for e in run.outputs[nid]["images"]]))
            for nid, n in STITCH_PROMPT.items() if n["class_type"] == "SaveImage"}


@pytest.mark.parametrize("name", sorted(STITCH))
def test_stitch_matches_comfyui(name, stitched):
    assert len(STITCH) == 5
    ours, ref = stitched[name], STITCH[name]
    assert ours.shape == ref.shape
    # Lanczos (through PIL on 8-bit pixels) is the same on both sides: exact
    assert torch.equal(ours, ref), f"{name}: {int((ours != ref).sum())} values differ"


def test_stitch_without_image2_and_sizes():
    from latentgraph.nodes.stitch import ImageStitch

    a = torch.rand(1, 4, 6, 3)
    assert ImageStitch(image1=a, direction="right", match_image_size=True, spacing_width=0,
                       spacing_color="white") is a
    out = ImageStitch(image1=a, image2=torch.rand(3, 2, 2, 3), direction="down", match_image_size=False,
                      spacing_width=3, spacing_color="black")
    assert out.shape == (3, 4 + 4 + 2, 6, 3)  # spacing 3 is made even: 4
    assert torch.equal(out[2, :4], a[0]) and out[:, 4:8].max() == 0.0
