"""Make the README's pictures with the shipped demo model:

    docs/txt2img.png    what `make demo` writes (workflows/txt2img.yaml), enlarged 4x
    docs/demo_grid.png  one row per prompt, four seeds each, enlarged 2x; the last rows are
                        captions the model never saw whole in training

    .venv/bin/python docs/make_pictures.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry, create_services
from latentgraph.training.shapes import caption, split_combinations

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle on a blue background", "a yellow square on a black background",
           "a white triangle on a green background", "a purple diamond on a yellow background",
           "a blue cross on a white background"]
SEEDS = (1, 2, 3, 4)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = Environment(output_dir=Path(tmp) / "out", models_dir=Path(tmp) / "models", device="cpu")
        ex = Executor(create_registry(), env, services=create_services(env))
        wf = Workflow.load(ROOT / "workflows" / "txt2img.yaml")
        res = ex.run(wf)
        (saved,) = res.outputs["save"]["images"]
        demo = Image.open(env.output_dir / saved["filename"])
        demo.resize((demo.width * 4, demo.height * 4), Image.NEAREST).save(ROOT / "docs" / "txt2img.png")

        _, held_out = split_combinations()
        prompts = PROMPTS + [caption(*held_out[i]) for i in (0, 9, 18)]
        rows = []
        for prompt in prompts:
            wf.set("positive.text", prompt)
            tiles = []
            for seed in SEEDS:
                wf.set("sampler.seed", seed)
                image = ex.run(wf, targets=["decode"]).get("decode")[0]
                tiles.append(np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8))
            rows.append((prompt, np.concatenate(tiles, axis=1)))
    scale, label_w = 2, 330
    tile_h = rows[0][1].shape[0] * scale
    grid = Image.new("RGB", (label_w + rows[0][1].shape[1] * scale, tile_h * len(rows)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (prompt, strip) in enumerate(rows):
        img = Image.fromarray(strip)
        grid.paste(img.resize((img.width * scale, img.height * scale), Image.NEAREST), (label_w, i * tile_h))
        note = " (held out)" if i >= len(PROMPTS) else ""
        draw.text((8, i * tile_h + tile_h // 2 - 6), prompt + note, fill="black")
    grid.save(ROOT / "docs" / "demo_grid.png")
    print("wrote docs/txt2img.png and docs/demo_grid.png")


if __name__ == "__main__":
    main()
