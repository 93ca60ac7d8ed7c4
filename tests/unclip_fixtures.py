"""The tiny files of tests/test_unclip.py, made from seeds (the references in
tests/fixtures/comfy_reference/unclip/ were computed by ComfyUI on files made by these functions)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from latentgraph.models.checkpoint import original_layout, save_checkpoint
from latentgraph.models.families import METADATA_KEY, tiny_architecture
from latentgraph.models.make import make_unclip_checkpoint, random_networks

UNCLIP_SEED, REVISION_SEED = 5, 7


def make_unclip_l(path: str | Path) -> None:
    """Tiny SD2.1-unCLIP-L: 32-wide image embeddings, label_emb 64."""
    make_unclip_checkpoint(path, "sd21_unclip_l", "tiny", seed=UNCLIP_SEED)


def revision_architecture():
    """Tiny SDXL whose pooled text is 1280 wide, as Revision needs (SDXL's noise augmentor takes
    1280-wide ViT-bigG embeddings): the tiny SDXL with a 1280-wide text projection."""
    arch = tiny_architecture("sdxl")
    arch.text["g"] = dataclasses.replace(arch.text["g"], projection_dim=1280)
    arch.unet = dataclasses.replace(arch.unet, adm_in_channels=1280 + 6 * 256)
    return arch


def make_revision_sdxl(path: str | Path) -> None:
    arch = revision_architecture()
    with torch.no_grad():
        tensors = original_layout(arch, *random_networks(arch, REVISION_SEED))
    save_checkpoint(tensors, path, metadata={"format": "pt", METADATA_KEY: arch.to_json()})


REFINER_SEED = 8


def make_revision_refiner(path: str | Path) -> None:
    """Tiny SDXL refiner whose pooled text is 1280 wide (Revision on the refiner, as ComfyUI's
    SDXLRefiner reads it): label_emb 1280 + 5 * 256."""
    arch = tiny_architecture("sdxl_refiner")
    arch.text["g"] = dataclasses.replace(arch.text["g"], projection_dim=1280)
    arch.unet = dataclasses.replace(arch.unet, adm_in_channels=1280 + 5 * 256)
    with torch.no_grad():
        tensors = original_layout(arch, *random_networks(arch, REFINER_SEED))
    save_checkpoint(tensors, path, metadata={"format": "pt", METADATA_KEY: arch.to_json()})
