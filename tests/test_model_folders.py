"""Model folders as ComfyUI has them: legacy folder names, and extra_model_paths.yaml so an
existing ComfyUI (or A1111) install's models are found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentgraph.cli import main
from latentgraph.graph import Environment
from latentgraph.graph.env import read_extra_model_paths
from latentgraph.graph.errors import LatentgraphError

ROOT = Path(__file__).resolve().parents[1]


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_extra_model_paths_yaml_is_read_like_comfyuis(tmp_path, monkeypatch):
    monkeypatch.setenv("SDROOT", str(tmp_path / "webui"))
    cfg = tmp_path / "conf" / "extra_model_paths.yaml"
    cfg.parent.mkdir()
    cfg.write_text(
        "comfyui:\n"
        "  base_path: ../comfy\n"           # relative to the file's folder
        "  is_default: true\n"
        "  checkpoints: models/checkpoints/\n"
        "  clip: models/clip/\n"            # the legacy name of text_encoders
        "  diffusion_models: |\n"
        "    models/diffusion_models\n"
        "    models/unet\n"
        "a111:\n"
        "  base_path: $SDROOT\n"
        "  checkpoints: models/Stable-diffusion\n"
        "  loras: |\n"
        "    models/Lora\n"
        "    /abs/LyCORIS\n"
        "empty:\n")
    dirs = read_extra_model_paths(cfg)
    comfy, webui = tmp_path / "conf" / ".." / "comfy", tmp_path / "webui"
    assert dirs == {
        "checkpoints": [comfy / "models/checkpoints", webui / "models/Stable-diffusion"],
        "text_encoders": [comfy / "models/clip"],
        "diffusion_models": [comfy / "models/diffusion_models", comfy / "models/unet"],
        "loras": [webui / "models/Lora", Path("/abs/LyCORIS")],
    }


@pytest.mark.parametrize("text, message", [
    ("- a list\n", "expected sections"),
    ("comfyui: 5\n", "section 'comfyui' must map"),
    ("comfyui:\n  checkpoints: [1, 2]\n", "comfyui.checkpoints must be a path"),
    ("comfyui: {a: [}\n", "invalid YAML"),
])
def test_bad_extra_model_paths_name_the_file(tmp_path, text, message):
    cfg = tmp_path / "extra.yaml"
    cfg.write_text(text)
    with pytest.raises(LatentgraphError, match=message) as info:
        read_extra_model_paths(cfg)
    assert str(cfg) in str(info.value)


def test_legacy_folder_names_and_listing(tmp_path):
    env = Environment(models_dir=tmp_path)
    touch(tmp_path / "clip" / "old.safetensors")
    touch(tmp_path / "text_encoders" / "new.safetensors")
    touch(tmp_path / "unet" / "u.safetensors")
    assert env.list_models("text_encoders") == ["new.safetensors", "old.safetensors"]
    assert env.list_models("clip") == env.list_models("text_encoders")
    assert env.list_models("diffusion_models") == ["u.safetensors"]


def test_a_checkpoint_in_an_extra_folder_is_listed_and_found_by_the_cli(tmp_path, capsys):
    from latentgraph.models.make import make_checkpoint

    comfy = tmp_path / "ComfyUI"
    make_checkpoint(comfy / "models" / "checkpoints" / "sub" / "mine.safetensors", "sd15", "tiny", seed=1)
    cfg = tmp_path / "extra_model_paths.yaml"
    cfg.write_text(f"comfyui:\n  base_path: {comfy}\n  checkpoints: models/checkpoints\n")
    assert main(["nodes", "--json", "--models-dir", str(tmp_path / "none"), "--extra-model-paths", str(cfg)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "sub/mine.safetensors" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    common = ["--models-dir", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out"),
              "--set", "ckpt.ckpt_name=sub/mine.safetensors", "--set", "sampler.steps=2"]
    flow = str(ROOT / "workflows" / "txt2img.yaml")
    assert main(["validate", flow, *common]) == 1  # not found without the extra paths ...
    assert "sub/mine.safetensors" in capsys.readouterr().err
    assert main(["run", flow, *common, "--extra-model-paths", str(cfg), "--no-progress"]) == 0  # ... found with them
    assert (tmp_path / "out" / "txt2img_00001_.png").is_file()
    assert main(["run", flow, *common, "--extra-model-paths", str(tmp_path / "missing.yaml")]) == 1
    assert "missing.yaml: cannot read" in capsys.readouterr().err
