"""What the tests that compare latentgraph with ComfyUI on tiny models share.

ComfyUI (the oracle) loads tiny checkpoints through its oracle-only ``TinyCheckpointLoader``; the
same graphs run here with ``CheckpointLoaderSimple`` reading the file with its architecture
recorded in the metadata (the head counts a state dict cannot show). ``tiny_env`` makes a models
folder holding the tiny SD1 checkpoint that way; ``as_latentgraph`` turns the prompt ComfyUI ran
into the one run here."""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from latentgraph.graph import Environment
from latentgraph.models.checkpoint import detect_architecture, read_state_dict
from latentgraph.models.families import METADATA_KEY

from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
# what the tiny SD1 checkpoint's tensors cannot show: 8 UNet heads, 2 text-encoder heads
TINY_SD15_OVERRIDES = {"unet_num_heads": 8, "text_num_heads": 2}


def install_checkpoint(source: Path, models_dir: Path, overrides: dict, name: str | None = None):
    """Copy a tiny checkpoint into ``models_dir/checkpoints`` with its architecture in the
    metadata; returns that Architecture."""
    folder = models_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    sd, meta = read_state_dict(source)
    target = folder / (name or source.name)
    arch = detect_architecture(sd, meta, source.name, overrides)
    save_file(sd, str(target), metadata={METADATA_KEY: arch.to_json()})
    return arch


def tiny_env(root: Path) -> Environment:
    """An environment under ``root`` (out/, in/, tmp/, models/) with tiny_sd15.safetensors installed."""
    install_checkpoint(REF / "tiny_sd15.safetensors", root / "models", TINY_SD15_OVERRIDES)
    (root / "in").mkdir(exist_ok=True)
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


def as_latentgraph(prompt: dict, drop: tuple[str, ...] = ()) -> dict:
    """ComfyUI's prompt with each TinyCheckpointLoader as CheckpointLoaderSimple (same ckpt_name)
    and without the nodes of the classes in ``drop`` (e.g. the SaveLatent sinks)."""
    out = {}
    for nid, n in prompt.items():
        if n["class_type"] == "TinyCheckpointLoader":
            out[nid] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": n["inputs"]["ckpt_name"]}}
        elif n["class_type"] not in drop:
            out[nid] = n
    return out


def saved_latents(env: Environment, run, prompt: dict) -> dict:
    """{the name after the folder in a SaveLatent's filename_prefix: the latent it wrote} of a run."""
    from safetensors.torch import load_file

    out = {}
    for nid, n in prompt.items():
        if n["class_type"] == "SaveLatent":
            saved = run.outputs[nid]["latents"][0]
            path = env.output_dir / saved["subfolder"] / saved["filename"]
            out[n["inputs"]["filename_prefix"].split("/")[-1]] = load_file(str(path))["latent_tensor"]
    return out
