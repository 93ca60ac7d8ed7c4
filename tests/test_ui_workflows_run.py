"""Every ComfyUI template fixture (and two frontend-made subgraph workflows) runs end to end, as
it is (sizes, steps, samplers), with tiny random checkpoints placed under the model names it
references. About 6 minutes on 2 cores (768x768 and 1024x1024 at 25-30 steps): marked slow,
run by .ci/run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes import create_registry, create_services

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_workflows"
CHECKPOINTS = {"v1-5-pruned-emaonly-fp16.safetensors": "sd15", "dreamshaper_8.safetensors": "sd15",
               "512-inpainting-ema.safetensors": "sd2", "sd_xl_base_1.0.safetensors": "sdxl",
               "sd_xl_turbo_1.0_fp16.safetensors": "sdxl", "sd_xl_refiner_1.0.safetensors": "sdxl_refiner"}


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    home = tmp_path_factory.mktemp("comfy_home")
    for seed, (name, family) in enumerate(CHECKPOINTS.items()):
        make_checkpoint(home / "models" / "checkpoints" / name, family, "tiny", seed=seed)
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    (home / "models" / "loras").mkdir(parents=True)
    save_file({f"{key}.lora_up.weight": torch.randn(32, 4, generator=g),
               f"{key}.lora_down.weight": torch.randn(4, 32, generator=g), f"{key}.alpha": torch.tensor(4.0)},
              str(home / "models" / "loras" / "blindbox_v1_mix.safetensors"))
    (home / "input").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(home / "input" / "image2image_input_image.jpg")
    rgba = np.concatenate([rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.full((64, 64, 1), 255, np.uint8)], -1)
    rgba[16:40, 16:48, 3] = 0
    Image.fromarray(rgba, "RGBA").save(home / "input" / "inpaint_example_input_image.png")
    env = Environment(output_dir=home / "output", input_dir=home / "input", temp_dir=home / "temp",
                      models_dir=home / "models", device="cpu")
    return Executor(create_registry(), env, services=create_services(env))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.name[: -len(".ui.json")] for p in FIXTURES.glob("*.ui.json")))
def test_fixture_runs_end_to_end(executor, name):
    wf = Workflow.load(FIXTURES / f"{name}.ui.json", executor.registry)
    result = executor.run(wf)
    (images,) = [ui["images"] for ui in result.outputs.values()]
    path = executor.env.output_dir / images[0]["subfolder"] / images[0]["filename"]
    picture = Image.open(path)
    latent = next((n for n in wf.nodes.values() if n.class_type == "EmptyLatentImage"), None)
    if latent is not None:
        assert picture.size == (latent.inputs["width"], latent.inputs["height"])
    # the UI graph went into the PNG, as ComfyUI's frontend sends it
    assert json.loads(picture.text["workflow"])["nodes"]
    assert set(json.loads(picture.text["prompt"])) == set(wf.nodes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["nested", "two_instances"])
def test_subgraph_fixture_runs_end_to_end(executor, name):
    """Frontend-made subgraph workflows (tests/fixtures/subgraphs) run as they are."""
    wf = Workflow.load(FIXTURES.parent / "subgraphs" / f"{name}.ui.json", executor.registry)
    # a fresh result cache: these compute what the default template computes, which may have run
    executor = Executor(executor.registry, executor.env, services=executor.services)
    result = executor.run(wf)
    saved = [image for ui in result.outputs.values() for image in ui["images"]]
    assert len(saved) == (2 if name == "two_instances" else 1)
    for image in saved:
        picture = Image.open(executor.env.output_dir / image["subfolder"] / image["filename"])
        assert picture.size == (512, 512)
        assert any(":" in k for k in json.loads(picture.text["prompt"]))  # flattened ids
