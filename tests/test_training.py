"""The procedural data set, the picture reader the quality tests rely on, and the training
code at toy size: deterministic, and writing a checkpoint the regular loader takes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import read_state_dict
from latentgraph.nodes import create_registry, create_services
from latentgraph.training import shapes
from latentgraph.training.shapes import (COLOURS, SHAPES, Scene, caption, combinations, make_dataset, read_picture,
                                         render, split_combinations)
from latentgraph.training.train import TrainConfig, architecture, rescale_latents, train_demo
from latentgraph.models.vae import AutoencoderKL


def test_combinations_and_the_held_out_split():
    combos = combinations()
    assert len(combos) == len(COLOURS) * len(SHAPES) * (len(COLOURS) - 1) == 280
    train, held = split_combinations(0.1, seed=0)
    assert len(train) == 252 and len(held) == 28
    assert not set(train) & set(held) and set(train) | set(held) == set(combos)
    # every word of a held-out caption is seen in training, in other combinations
    for colour, shape, background in held:
        assert any(c == colour for c, _, _ in train)
        assert any(s == shape for _, s, _ in train)
        assert any(b == background for _, _, b in train)
    assert split_combinations(0.1, seed=0) == (train, held)
    assert split_combinations(0.1, seed=1)[1] != held
    assert caption("red", "circle", "blue") == "a red circle on a blue background"


def test_pictures_are_seeded_and_show_their_caption():
    scenes, images = make_dataset(40, combinations(), seed=5)
    again_scenes, again = make_dataset(40, combinations(), seed=5)
    assert scenes == again_scenes and np.array_equal(images, again)
    assert not np.array_equal(make_dataset(40, combinations(), seed=6)[1], images)
    assert images.shape == (40, 64, 64, 3) and images.dtype == np.uint8
    radii = [s.radius for s in scenes]
    assert min(radii) < max(radii) - 3  # sizes vary
    for scene, image in zip(scenes, images):
        corner = image[0, 0]
        assert np.abs(corner.astype(int) - COLOURS[scene.background]).max() <= 1
        centre = image[int(scene.cy), int(scene.cx)]  # every shape covers its centre
        assert np.abs(centre.astype(int) - COLOURS[scene.colour]).max() <= 1


def test_the_reader_reads_every_rendered_picture_right():
    rng = random.Random(11)
    scenes = [shapes.random_scene(rng, combinations()) for _ in range(300)]
    for scene in scenes:
        seen = read_picture(render(scene))
        assert (seen["colour"], seen["shape"], seen["background"]) == (scene.colour, scene.shape, scene.background)


def test_the_reader_ignores_stray_specks_and_reports_an_empty_picture():
    scene = Scene("triangle", "red", "white", 40.0, 36.0, 14.0)
    image = render(scene).copy()
    image[3:6, 3:6] = COLOURS["black"]  # a speck far from the shape
    seen = read_picture(image)
    assert (seen["colour"], seen["shape"], seen["background"]) == ("red", "triangle", "white")
    blank = np.full((64, 64, 3), COLOURS["green"], np.uint8)
    assert read_picture(blank) == {"background": "green", "colour": None, "shape": None}


def test_rescaling_the_latents_is_exact_and_gives_unit_variance():
    torch.manual_seed(0)
    vae = AutoencoderKL(architecture().vae).eval()
    _, images = make_dataset(16, combinations(), seed=1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        before = vae.decode(vae.encode(x))
        k = rescale_latents(vae, x)
        z = vae.encode(x)
        after = vae.decode(z)
    assert k != pytest.approx(1.0)
    assert float((z * 0.18215).std()) == pytest.approx(1.0, rel=1e-3)
    assert torch.allclose(before, after, atol=1e-4)


TOY = TrainConfig(vae_steps=3, vae_batch=2, pool=32, unet_steps=3, unet_batch=4, text_lr=0.05)


@pytest.mark.parametrize("text_encoder", ["frozen", "trained"])
def test_toy_training_is_deterministic_and_loads_as_an_ordinary_checkpoint(tmp_path, text_encoder):
    cfg = TrainConfig(**{**TOY.__dict__, "text_encoder": text_encoder})
    seen: list = []
    report = train_demo(tmp_path / "a.safetensors", cfg, progress=lambda *a: seen.append(a), log=lambda _: None)
    train_demo(tmp_path / "b.safetensors", cfg, log=lambda _: None)
    a, b = (tmp_path / "a.safetensors").read_bytes(), (tmp_path / "b.safetensors").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert [s[:3] for s in seen] == [("vae", 1, 3), ("vae", 2, 3), ("vae", 3, 3),
                                     ("unet", 1, 3), ("unet", 2, 3), ("unet", 3, 3)]
    assert all(np.isfinite(s[3]) for s in seen)
    assert report["train_combinations"] == 252 and report["bytes"] == len(a)

    sd, meta = read_state_dict(tmp_path / "a.safetensors")
    assert json.loads(meta["latentgraph.architecture"])["family"] == "sd15"
    assert len(meta["latentgraph.held_out"].split(";")) == 28
    assert all(v.dtype == torch.float16 for v in sd.values() if v.is_floating_point())
    assert {k.split(".")[0] for k in sd} == {"model", "first_stage_model", "cond_stage_model"}

    # the text encoder learns only when asked to
    fresh = train_demo(tmp_path / "c.safetensors", TrainConfig(**{**TOY.__dict__, "text_encoder": "frozen",
                                                                  "unet_steps": 0}), log=lambda _: None)
    assert fresh["bytes"] > 0
    other, _ = read_state_dict(tmp_path / "c.safetensors")
    text_keys = [k for k in sd if k.startswith("cond_stage_model.")]
    same = all(torch.equal(sd[k], other[k]) for k in text_keys)
    assert same == (text_encoder == "frozen")

    # found by name in a models folder and run by the ordinary nodes
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    (tmp_path / "a.safetensors").rename(tmp_path / "models" / "checkpoints" / "toy.safetensors")
    env = Environment(output_dir=tmp_path / "out", models_dir=tmp_path / "models", device="cpu")
    wf = Workflow.load(Path(__file__).resolve().parents[1] / "workflows" / "txt2img.yaml")
    wf.set("ckpt.ckpt_name", "toy.safetensors")
    wf.set("sampler.steps", 2)
    res = Executor(create_registry(), env, services=create_services(env)).run(wf)
    (image,) = res.outputs["save"]["images"]
    assert (tmp_path / "out" / image["filename"]).stat().st_size > 0
