"""CLIP vision and style-model nodes with ComfyUI's names and inputs: load a CLIP image encoder
(models/clip_vision) and encode images with it; load a T2I style adapter (models/style_models)
and append its style tokens to conditioning.

A CLIP_VISION_OUTPUT is ``models.clip_vision.ClipVisionOutput`` (ComfyUI's field names), so
unCLIP, Revision and custom nodes read the same fields.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import CONDITIONING, IMAGE, Combo, Float, NodeContext, Socket, node
file_key = lazy("..models.checkpoint", "file_key")
ClipVision = lazy("..models.clip_vision", "ClipVision")
ClipVisionOutput = lazy("..models.clip_vision", "ClipVisionOutput")
load_clip_vision_file = lazy("..models.clip_vision", "load_clip_vision_file")
StyleAdapter = lazy("..models.style_model", "StyleAdapter")
load_style_model_file = lazy("..models.style_model", "load_style_model_file")
from .budget import check_tensor
from .loaders import missing_model, model_files, model_identity, services

CLIP_VISION = Socket("CLIP_VISION")
CLIP_VISION_OUTPUT = Socket("CLIP_VISION_OUTPUT")
STYLE_MODEL = Socket("STYLE_MODEL")
CLIP_VISION_FOLDER = "clip_vision"
STYLE_FOLDER = "style_models"
Cond = Any


def _check_clip(clip_name, env):
    return missing_model(env, CLIP_VISION_FOLDER, "CLIP vision model", clip_name)


def _key_clip(clip_name, env):
    return model_identity(env, CLIP_VISION_FOLDER, clip_name)


def _check_style(style_model_name, env):
    return missing_model(env, STYLE_FOLDER, "style model", style_model_name)


def _key_style(style_model_name, env):
    return model_identity(env, STYLE_FOLDER, style_model_name)


def _load(ctx: NodeContext, folder: str, name: str, what: str, load):
    placement, cache = services(ctx)
    path: Path = ctx.env.find_model(folder, name)
    dtype = placement.dtypes["text"]  # image encoders are placed as text encoders are (ComfyUI too)
    return cache.get_or_load((what, *file_key(path), placement.key()),
                             lambda: load(path, dtype).to(placement.home))


@node(category="loaders", display_name="Load CLIP Vision", outputs=[CLIP_VISION],
      fingerprint=_key_clip, validate=_check_clip)
def CLIPVisionLoader(clip_name: Annotated[str, Combo(model_files(CLIP_VISION_FOLDER))], ctx: NodeContext) -> ClipVision:
    """Loads a CLIP image encoder (ViT-L/14, ViT-H/14, ViT-bigG/14; transformers or
    OpenAI/OpenCLIP layout) from models/clip_vision."""
    return _load(ctx, CLIP_VISION_FOLDER, clip_name, "clip_vision", load_clip_vision_file)


def _budget(image: torch.Tensor):
    b, h, w = image.shape[:3]

    def check(shape, kind):
        check_tensor(shape, f"CLIP vision encoding of an image batch of {b} x {w} x {h}", kind)
    return check


@node(category="conditioning", display_name="CLIP Vision Encode", outputs=[CLIP_VISION_OUTPUT])
def CLIPVisionEncode(clip_vision: Annotated[ClipVision, CLIP_VISION], image: Annotated[Tensor, IMAGE],
                     crop: Annotated[str, Combo(["center", "none"])], ctx: NodeContext) -> ClipVisionOutput:
    """Encodes images with a CLIP vision model: shortest side resized to its input size and
    centre-cropped ("center") or squashed to a square ("none"), as ComfyUI."""
    placement, _ = services(ctx)
    with placement.use(clip_vision):
        return clip_vision.encode_image(image, crop=crop == "center", check=_budget(image))


@node(category="loaders", display_name="Load Style Model", outputs=[STYLE_MODEL],
      fingerprint=_key_style, validate=_check_style)
def StyleModelLoader(style_model_name: Annotated[str, Combo(model_files(STYLE_FOLDER))], ctx: NodeContext) -> StyleAdapter:
    """Loads a T2I style adapter (SD1.x) from models/style_models."""
    return _load(ctx, STYLE_FOLDER, style_model_name, "style_model", load_style_model_file)


@node(category="conditioning/style_model", display_name="Apply Style Model", outputs=[CONDITIONING])
def StyleModelApply(
    conditioning: Annotated[Cond, CONDITIONING],
    style_model: Annotated[StyleAdapter, STYLE_MODEL],
    clip_vision_output: Annotated[ClipVisionOutput, CLIP_VISION_OUTPUT],
    strength: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.001)],
    strength_type: Annotated[str, Combo(["multiply", "attn_bias"])],
    ctx: NodeContext,
) -> list:
    """Appends the style tokens of every encoded image to each entry's text tokens.
    "multiply" scales the tokens by strength; "attn_bias" leaves them whole and records
    log(strength) as an attention bias (``attention_mask``), which SD1.x/SD2.x/SDXL UNets do
    not read, as in ComfyUI."""
    placement, _ = services(ctx)
    with placement.use(style_model):
        tokens = style_model.get_cond(clip_vision_output)  # (B, n, context)
    return apply_style(conditioning, tokens, strength, strength_type)


def apply_style(conditioning: list, tokens: torch.Tensor, strength: float, strength_type: str) -> list:
    """ComfyUI's StyleModelApply on style ``tokens`` (B, n, context): all images' tokens in one
    row (1, B * n, context) appended to each entry; the attention mask grown as ComfyUI grows it."""
    cond = tokens.flatten(0, 1).unsqueeze(0)
    if strength_type == "multiply":
        cond = cond * strength
    n = cond.shape[1]
    out = []
    for txt, opts in conditioning:
        if txt.shape[-1] != cond.shape[-1]:
            raise ValueError(f"style_model: its tokens are {cond.shape[-1]} wide, the conditioning's are "
                             f"{txt.shape[-1]} (the published style adapter is for SD1.x, 768 wide)")
        opts = dict(opts)
        if "attention_mask" in opts or (strength_type == "attn_bias" and strength != 1.0):
            opts.update(_grown_mask(opts, txt, n, strength if strength_type == "attn_bias" else 1.0))
        row = cond.to(txt).expand(txt.shape[0], -1, -1)  # the same tokens for each row of the entry
        out.append([torch.cat((txt, row), dim=1), opts])
    return out


def _grown_mask(opts: dict, txt: torch.Tensor, n: int, bias_strength: float) -> dict:
    """The entry's attention mask (text, then any reference-image tokens) with room for n style
    tokens after the text; queries attending to them get log(bias_strength) (fp16, as ComfyUI)."""
    ref_h, ref_w = opts.get("attention_mask_img_shape", (1, 1))
    n_ref, n_txt = ref_h * ref_w, txt.shape[1]
    size = n_txt + n + n_ref
    check_tensor((txt.shape[0], size, size), f"an attention mask for {n_txt} text and {n} style tokens",
                 "an attention mask", torch.float16)
    mask = opts.get("attention_mask")
    if mask is None:
        mask = torch.zeros((txt.shape[0], n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    elif mask.dtype == torch.bool:
        mask = torch.log(mask.to(torch.float16))  # True -> 0, False -> -inf
    new = torch.zeros((txt.shape[0], size, size), dtype=torch.float16)
    new[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    new[:, :n_txt, n_txt + n:] = mask[:, :n_txt, n_txt:]
    new[:, n_txt + n:, :n_txt] = mask[:, n_txt:, :n_txt]
    new[:, n_txt + n:, n_txt + n:] = mask[:, n_txt:, n_txt:]
    bias = math.log(bias_strength) if bias_strength > 0 else float("-inf")
    new[:, :n_txt, n_txt:n_txt + n] = bias
    new[:, n_txt + n:, n_txt:n_txt + n] = bias
    return {"attention_mask": new.to(txt.device), "attention_mask_img_shape": (ref_h, ref_w)}
