"""GLIGEN nodes with ComfyUI's names and inputs: load a GLIGEN textbox file, and put a phrase
in a box into conditioning entries (the sampler turns the boxes into a middle_patch, see
models/gligen.py).

Boxes are stored as ComfyUI stores them, ``opts["gligen"] = ("position", GLIGEN, [(pooled,
h, w, y, x), ...])`` in latent pixels (the node's pixel sizes floor-divided by 8); each apply
adds a box to the entry's list.
"""

from __future__ import annotations

from typing import Annotated, Any

from ..graph import CLIP, CONDITIONING, Combo, Int, NodeContext, Socket, String, node
from ..graph.lazy import lazy
file_key = lazy("..models.checkpoint", "file_key")
TextModel = lazy("..models.clip", "TextModel")
GligenModel = lazy("..models.gligen", "GLIGEN")
_gligen = lazy("..models.gligen")  # MAX_OBJS, an int: read where used
load_gligen_file = lazy("..models.gligen", "load_gligen_file")
from .loaders import missing_model, model_files, model_identity, services

GLIGEN = Socket("GLIGEN")
FOLDER = "gligen"
MAX_RESOLUTION = 16384
Cond = Any


def _check(gligen_name, env):
    return missing_model(env, FOLDER, "GLIGEN", gligen_name)


def _key(gligen_name, env):
    return model_identity(env, FOLDER, gligen_name)


@node(category="loaders", display_name="GLIGENLoader", outputs=[GLIGEN], fingerprint=_key, validate=_check)
def GLIGENLoader(gligen_name: Annotated[str, Combo(model_files(FOLDER))], ctx: NodeContext) -> GligenModel:
    """Loads a GLIGEN textbox model (SD1.x) from models/gligen."""
    placement, cache = services(ctx)
    path = ctx.env.find_model(FOLDER, gligen_name)
    dtype = placement.dtypes["unet"]
    return cache.get_or_load(("gligen", *file_key(path), placement.key()),
                             lambda: load_gligen_file(path, dtype).to(placement.home))


_PIXELS = Int(64, min=8, max=MAX_RESOLUTION, step=8)
_OFFSET = Int(0, min=0, max=MAX_RESOLUTION, step=8)


@node(category="conditioning/gligen", display_name="GLIGENTextBoxApply", outputs=[CONDITIONING])
def GLIGENTextBoxApply(
    conditioning_to: Annotated[Cond, CONDITIONING],
    clip: Annotated[TextModel, CLIP],
    gligen_textbox_model: Annotated[GligenModel, GLIGEN],
    text: Annotated[str, String(multiline=True, dynamic_prompts=True)],
    width: Annotated[int, _PIXELS],
    height: Annotated[int, _PIXELS],
    x: Annotated[int, _OFFSET],
    y: Annotated[int, _OFFSET],
) -> list:
    """Places ``text`` in the box (x, y, width, height), in image pixels, of every entry; the
    phrase is encoded by ``clip`` into its pooled output (SD1.x CLIP-L, unprojected)."""
    _, pooled = clip.encode(text)
    if pooled.shape[-1] != gligen_textbox_model.in_dim:
        raise ValueError(f"gligen_textbox_model: this GLIGEN takes {gligen_textbox_model.in_dim}-wide pooled "
                         f"text, the clip gives {pooled.shape[-1]} (GLIGEN is for SD1.x models)")
    box = (pooled, height // 8, width // 8, y // 8, x // 8)
    out = []
    for tensor, opts in conditioning_to:
        prev = list(opts["gligen"][2]) if opts.get("gligen") is not None else []
        if len(prev) >= _gligen.MAX_OBJS:
            raise ValueError(f"conditioning_to: an entry already has {len(prev)} GLIGEN boxes; "
                             f"GLIGEN takes at most {_gligen.MAX_OBJS}")
        out.append([tensor, {**opts, "gligen": ("position", gligen_textbox_model, prev + [box])}])
    return out
