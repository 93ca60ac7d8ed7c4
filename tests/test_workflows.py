"""Every example workflow in workflows/ runs end to end on tiny checkpoints, from its YAML and
from its ComfyUI API JSON, giving the same image; the same seed gives a byte-identical PNG
in a fresh process; a LoRA changes the image and leaves the cached base model untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes import create_registry, create_services

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"

# Small sizes and few steps so tiny models run in a blink; everything else as shipped.
SMALL = {
    "txt2img": {"latent.width": 64, "latent.height": 64, "sampler.steps": 4},
    "img2img": {"sampler.steps": 4},
    "inpaint": {"sampler.steps": 4},
    "hires_fix": {"latent.width": 64, "latent.height": 64, "first.steps": 3, "second.steps": 3},
    "area_composition": {"latent.width": 128, "latent.height": 128, "sampler.steps": 3},
    "sdxl_refiner": {"latent.width": 64, "latent.height": 64, "base_pass.steps": 5, "base_pass.end_at_step": 4,
                     "refiner_pass.steps": 5, "refiner_pass.start_at_step": 4},
    "lora": {"latent.width": 64, "latent.height": 64, "sampler.steps": 3},
    "shapes": {},
}
SIZES = {"txt2img": (64, 64), "img2img": (128, 96), "inpaint": (128, 96), "hires_fix": (96, 96),
         "area_composition": (128, 128), "sdxl_refiner": (64, 64), "lora": (64, 64), "shapes": (512, 512)}


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("home")
    ckpts = root / "models" / "checkpoints"
    make_checkpoint(ckpts / "v1-5-pruned-emaonly.safetensors", "sd15", "tiny", seed=1)
    make_checkpoint(ckpts / "sd_xl_base_1.0.safetensors", "sdxl", "tiny", seed=2)
    make_checkpoint(ckpts / "sd_xl_refiner_1.0.safetensors", "sdxl_refiner", "tiny", seed=3)
    g = torch.Generator().manual_seed(0)
    key = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    te = "lora_te_text_model_encoder_layers_0_mlp_fc1"
    lora = {f"{key}.lora_up.weight": torch.randn(32, 4, generator=g), f"{key}.lora_down.weight": torch.randn(4, 32, generator=g),
            f"{key}.alpha": torch.tensor(4.0), f"{te}.lora_up.weight": torch.randn(64, 2, generator=g),
            f"{te}.lora_down.weight": torch.randn(2, 32, generator=g)}
    (root / "models" / "loras").mkdir()
    save_file(lora, str(root / "models" / "loras" / "example_lora.safetensors"))
    (root / "input").mkdir()
    rng = np.random.default_rng(0)
    rgb = (rng.random((96, 128, 3)) * 255).astype("uint8")
    Image.fromarray(rgb).save(root / "input" / "example.png")
    rgba = np.concatenate([rgb, np.full((96, 128, 1), 255, np.uint8)], axis=-1)
    rgba[20:60, 30:90, 3] = 0  # the region to repaint
    Image.fromarray(rgba, "RGBA").save(root / "input" / "inpaint.png")
    return root


@pytest.fixture(scope="module")
def executor(home) -> Executor:
    env = Environment(output_dir=home / "output", input_dir=home / "input", temp_dir=home / "temp",
                      models_dir=home / "models", device="cpu")
    return Executor(create_registry(), env, services=create_services(env))


def load(name: str, form: str) -> Workflow:
    wf = Workflow.load(WORKFLOWS / f"{name}.{'yaml' if form == 'yaml' else 'api.json'}")
    for path, value in SMALL[name].items():
        wf.set(path, value)
    return wf


def saved(executor, result) -> Path:
    (image,) = [img for ui in result.outputs.values() for img in ui["images"]]
    return executor.env.output_dir / image["subfolder"] / image["filename"]


@pytest.mark.parametrize("name", list(SMALL))
def test_workflow_runs_from_yaml_and_api_json_alike(executor, name, tmp_path):
    first = executor.run(load(name, "yaml"))
    a = saved(executor, first)
    assert Image.open(a).size == SIZES[name] and first.executed
    # the API JSON is the same computation: in this executor everything is cached ...
    again = executor.run(load(name, "api"))
    assert again.executed == [] and saved(executor, again) == a
    # ... and a fresh executor (another result cache, same model cache) draws the same pixels
    env = Environment(output_dir=tmp_path, input_dir=executor.env.input_dir, models_dir=executor.env.models_dir,
                      temp_dir=tmp_path / "temp", device="cpu")
    fresh = Executor(executor.registry, env, services=executor.services)
    b = saved(fresh, fresh.run(load(name, "api")))
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_api_json_files_are_the_yaml_converted():
    registry = create_registry()
    for name in SMALL:
        yaml_api = Workflow.load(WORKFLOWS / f"{name}.yaml").to_api(registry)
        assert json.loads((WORKFLOWS / f"{name}.api.json").read_text()) == yaml_api, name


def test_same_seed_same_png_bytes_in_fresh_processes(home, tmp_path):
    digests = []
    for run in range(2):
        out = tmp_path / f"out{run}"
        cmd = [sys.executable, "-m", "latentgraph", "run", str(WORKFLOWS / "txt2img.yaml"), "--output-dir", str(out),
               "--models-dir", str(home / "models"), "--set", "latent.width=64", "--set", "latent.height=64",
               "--set", "sampler.steps=3", "--set", "sampler.sampler_name=dpmpp_sde", "--json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        digests.append(hashlib.sha256((out / "txt2img_00001_.png").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_lora_changes_the_image_and_leaves_the_base_untouched(executor):
    wf = load("lora", "yaml")
    res = executor.run(wf, targets=["ckpt", "sampler"])
    base_unet = res.get("ckpt", 0).unet
    before = {k: v.clone() for k, v in base_unet.state_dict().items()}
    with_lora = res.get("sampler")["samples"]
    wf.set("lora.strength_model", 0.0)
    wf.set("lora.strength_clip", 0.0)
    without = executor.run(wf, targets=["sampler"]).get("sampler")["samples"]
    plain = load("txt2img", "yaml")
    plain.set("ckpt.ckpt_name", "v1-5-pruned-emaonly.safetensors")
    plain.set("sampler.cfg", 7.0)
    plain.set("sampler.seed", 8)
    plain.set("sampler.steps", 3)
    plain.set("sampler.sampler_name", "dpmpp_2m")
    plain.set("sampler.scheduler", "karras")
    plain.set("positive.text", "a portrait in the style of the LoRA")
    plain.set("negative.text", "blurry")
    reference = executor.run(plain, targets=["sampler"]).get("sampler")["samples"]
    assert torch.equal(without, reference)  # strength 0 is the base model
    assert not torch.allclose(with_lora, reference)
    after = base_unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
