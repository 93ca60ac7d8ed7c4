"""ComfyUI's ``comfy.k_diffusion.utils``: the helpers packs reach there (``append_dims``, and
``FolderOfImages``, whose ``IMG_EXTENSIONS`` video packs filter files by)."""

from __future__ import annotations

from pathlib import Path

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.sampling.k_samplers import append_dims

__all__ = ["FolderOfImages", "append_dims"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class FolderOfImages(torch.utils.data.Dataset):
    """The images under a folder (recursively, sorted by path) as a dataset of ``(image,)``:
    PIL RGB images, or what ``transform`` makes of them."""

    IMG_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}

    def __init__(self, root, transform=None):
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"FolderOfImages: {self.root} is not a folder")
        self.transform = transform
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in self.IMG_EXTENSIONS and p.is_file())

    def __repr__(self) -> str:
        return f'FolderOfImages(root="{self.root}", len: {len(self)})'

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int) -> tuple:
        from PIL import Image

        with Image.open(self.paths[key]) as image:
            image = image.convert("RGB")
        return (image if self.transform is None else self.transform(image),)
