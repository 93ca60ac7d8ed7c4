"""A procedural data set of captioned pictures: a coloured shape on a coloured background,
"a red circle on a blue background". Seeded and reproducible; nothing is downloaded."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from PIL import Image, ImageDraw

# Named colours (sRGB). Foregrounds and backgrounds are drawn from the same palette.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 180),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZE = 64  # pixels
SUPERSAMPLE = 4  # drawn at 4x then reduced, for smooth edges


@dataclass(frozen=True)
class Scene:
    """One picture: what it shows and where."""

    shape: str
    colour: str
    background: str
    cx: float  # centre, in pixels
    cy: float
    radius: float  # half the shape's extent, in pixels

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def combinations() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) with colour != background."""
    return [(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if c != b]


def split_combinations(held_out_fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(train, held_out) caption combinations; held-out ones never appear whole in training,
    but each of their words does. Every shape and colour keeps most of its combinations."""
    combos = combinations()
    rng = random.Random(seed)
    rng.shuffle(combos)
    n_out = int(len(combos) * held_out_fraction)
    return sorted(combos[n_out:]), sorted(combos[:n_out])


def polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape (None for the circle)."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # pointing up, its bounding box is the square of side 2r
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":  # a plus with arms a third of the extent wide
        a = r / 3
        return [(cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a),
                (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a),
                (cx - r, cy - a), (cx - a, cy - a)]
    if shape == "circle":
        return None
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = SIZE) -> np.ndarray:
    """The scene as a uint8 RGB array (size, size, 3)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    s = SUPERSAMPLE
    cx, cy, r = scene.cx * s, scene.cy * s, scene.radius * s
    pts = polygon(scene.shape, cx, cy, r)
    fill = COLOURS[scene.colour]
    if pts is None:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(pts, fill=fill)
    return np.asarray(img.resize((size, size), Image.BOX))


def random_scene(rng: random.Random, combos: list[tuple[str, str, str]], size: int = SIZE) -> Scene:
    colour, shape, background = rng.choice(combos)
    radius = rng.uniform(0.2, 0.34) * size
    margin = radius + 1
    cx = rng.uniform(margin, size - margin)
    cy = rng.uniform(margin, size - margin)
    return Scene(shape, colour, background, cx, cy, radius)


def make_dataset(n: int, combos: list[tuple[str, str, str]], seed: int, size: int = SIZE):
    """n scenes and their pictures: (list[Scene], uint8 array (n, size, size, 3))."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, combos, size) for _ in range(n)]
    return scenes, np.stack([render(s, size) for s in scenes])


# -- reading pictures back (for quality measurements) -------------------------------------
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)


def nearest_colour(rgb) -> str:
    return _NAMES[int(np.argmin(((_PALETTE - np.asarray(rgb, np.float32)) ** 2).sum(-1)))]


def read_picture(image: np.ndarray) -> dict:
    """Background colour (the border's median), foreground colour (median of the largest
    connected region of pixels far from it) and shape (best overlap of that region, holes
    filled, with each shape drawn in its bounding box)."""
    img = image.astype(np.float32)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    bg = np.median(border, axis=0)
    dist = np.sqrt(((img - bg) ** 2).sum(-1))
    labels, n = ndimage.label(dist > 60, structure=np.ones((3, 3)))
    if n == 0:
        return {"background": nearest_colour(bg), "colour": None, "shape": None}
    sizes = ndimage.sum_labels(np.ones_like(dist), labels, index=np.arange(1, n + 1))
    mask = ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))
    if mask.sum() < 12:
        return {"background": nearest_colour(bg), "colour": None, "shape": None}
    fg = np.median(img[mask], axis=0)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = mask[y0:y1, x0:x1].astype(np.float32)
    best, best_iou = None, -1.0
    for shape in SHAPES:
        h, w = crop.shape
        side = 64
        template = Image.new("L", (side, side), 0)
        pts = polygon(shape, side / 2, side / 2, side / 2)
        d = ImageDraw.Draw(template)
        if pts is None:
            d.ellipse([0, 0, side - 1, side - 1], fill=255)
        else:
            d.polygon(pts, fill=255)
        t = np.asarray(template.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255 > 0.5
        inter = (t & (crop > 0.5)).sum()
        union = (t | (crop > 0.5)).sum()
        iou = inter / max(union, 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return {"background": nearest_colour(bg), "colour": nearest_colour(fg), "shape": best, "iou": float(best_iou)}
