"""Text encoding and conditioning nodes, with ComfyUI's names, inputs and semantics.

CONDITIONING is a list of ``[tensor (1, T, D), options]``; combining two lists means the
sampler averages the entries' predictions, weighted by strength, area and mask.
"""

from __future__ import annotations

from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import CLIP, CONDITIONING, MASK, Combo, Float, Int, String, node
TextModel = lazy("..models.clip", "TextModel")
from .budget import check_prompt

MAX_RESOLUTION = 16384
Cond = Any  # a CONDITIONING list


def _entry(cond: torch.Tensor, pooled: torch.Tensor | None, **options) -> list:
    return [cond, {"pooled_output": pooled, **options}]


def _with(conditioning: list, **options) -> list:
    """A copy of every entry with ``options`` set (inputs are never mutated)."""
    return [[t, {**opts, **options}] for t, opts in conditioning]


@node(category="conditioning", display_name="CLIP Text Encode (Prompt)", outputs=[CONDITIONING])
def CLIPTextEncode(
    text: Annotated[str, String("", multiline=True, dynamic_prompts=True, tooltip="The text to be encoded.")],
    clip: Annotated[TextModel, CLIP(tooltip="The CLIP model used for encoding the text.")],
) -> list:
    """Encodes a text prompt into conditioning that guides the diffusion model."""
    check_prompt(text, "text")
    cond, pooled = clip.encode(text)
    return [_entry(cond, pooled)]


@node(category="conditioning", display_name="CLIP Set Last Layer", outputs=[CLIP])
def CLIPSetLastLayer(
    clip: Annotated[TextModel, CLIP],
    stop_at_clip_layer: Annotated[int, Int(-1, min=-24, max=-1, step=1)],
) -> TextModel:
    """Uses an earlier hidden layer of the text encoder (clip skip); -1 is the last."""
    return clip.with_clip_skip(stop_at_clip_layer)


def _pair_tokens(clip: TextModel, text_g: str, text_l: str) -> dict:
    """SDXL: bigG reads text_g, CLIP-L reads text_l; the shorter gets empty chunks so both
    have as many (as ComfyUI pads them)."""
    tokens = {"g": clip.tokenizers["g"].tokenize_with_weights(text_g),
              "l": clip.tokenizers["l"].tokenize_with_weights(text_l)}
    empty = {k: clip.tokenizers[k].tokenize_with_weights("")[0] for k in tokens}
    while len(tokens["l"]) < len(tokens["g"]):
        tokens["l"].append(empty["l"])
    while len(tokens["g"]) < len(tokens["l"]):
        tokens["g"].append(empty["g"])
    return tokens


@node(category="advanced/conditioning", display_name="CLIPTextEncodeSDXL", outputs=[CONDITIONING])
def CLIPTextEncodeSDXL(
    clip: Annotated[TextModel, CLIP],
    width: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    height: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    crop_w: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION)],
    crop_h: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION)],
    target_width: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    target_height: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    text_g: Annotated[str, String("", multiline=True, dynamic_prompts=True)],
    text_l: Annotated[str, String("", multiline=True, dynamic_prompts=True)],
) -> list:
    """SDXL text encoding with separate prompts for its two encoders and its size conditioning."""
    check_prompt(text_g, "text_g")
    check_prompt(text_l, "text_l")
    if "g" not in clip.tokenizers or "l" not in clip.tokenizers:
        raise ValueError(f"CLIPTextEncodeSDXL needs an SDXL base checkpoint's CLIP, got {clip.arch.spec.label}")
    cond, pooled = clip.encode_tokens(_pair_tokens(clip, text_g, text_l))
    return [_entry(cond, pooled, width=width, height=height, crop_w=crop_w, crop_h=crop_h,
                   target_width=target_width, target_height=target_height)]


@node(category="advanced/conditioning", display_name="CLIPTextEncodeSDXLRefiner", outputs=[CONDITIONING])
def CLIPTextEncodeSDXLRefiner(
    ascore: Annotated[float, Float(6.0, min=0.0, max=1000.0, step=0.01)],
    width: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    height: Annotated[int, Int(1024, min=0, max=MAX_RESOLUTION)],
    text: Annotated[str, String("", multiline=True, dynamic_prompts=True)],
    clip: Annotated[TextModel, CLIP],
) -> list:
    """SDXL refiner text encoding with an aesthetic score."""
    check_prompt(text, "text")
    cond, pooled = clip.encode(text)
    return [_entry(cond, pooled, aesthetic_score=ascore, width=width, height=height)]


@node(category="conditioning", display_name="Conditioning (Combine)", outputs=[CONDITIONING])
def ConditioningCombine(conditioning_1: Annotated[Cond, CONDITIONING],
                        conditioning_2: Annotated[Cond, CONDITIONING]) -> list:
    """Both conditionings' entries: the sampler averages their predictions."""
    return conditioning_1 + conditioning_2


@node(category="conditioning", display_name="Conditioning (Average)", outputs=[CONDITIONING])
def ConditioningAverage(
    conditioning_to: Annotated[Cond, CONDITIONING],
    conditioning_from: Annotated[Cond, CONDITIONING],
    conditioning_to_strength: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
) -> list:
    """Blends the tokens (and pooled output) of conditioning_to with the first entry of
    conditioning_from: to * strength + from * (1 - strength)."""
    if not conditioning_from:
        return conditioning_to
    t0, opts0 = conditioning_from[0]
    p0 = opts0.get("pooled_output")
    out = []
    for t1, opts in conditioning_to:
        t0c = t0[:, : t1.shape[1]]
        if t0c.shape[1] < t1.shape[1]:  # pad the shorter source with zeros
            t0c = torch.cat([t0c, torch.zeros(1, t1.shape[1] - t0c.shape[1], t1.shape[2], dtype=t0.dtype)], dim=1)
        mixed = t1 * conditioning_to_strength + t0c * (1.0 - conditioning_to_strength)
        new = dict(opts)
        p1 = opts.get("pooled_output")
        if p1 is not None and p0 is not None:
            new["pooled_output"] = p1 * conditioning_to_strength + p0 * (1.0 - conditioning_to_strength)
        elif p0 is not None:
            new["pooled_output"] = p0
        out.append([mixed, new])
    return out


@node(category="conditioning", display_name="Conditioning (Concat)", outputs=[CONDITIONING])
def ConditioningConcat(conditioning_to: Annotated[Cond, CONDITIONING],
                       conditioning_from: Annotated[Cond, CONDITIONING]) -> list:
    """Appends the tokens of conditioning_from's first entry to each entry of conditioning_to."""
    if not conditioning_from:
        return conditioning_to
    extra = conditioning_from[0][0]
    return [[torch.cat([t, extra], dim=1), dict(opts)] for t, opts in conditioning_to]


@node(category="advanced/conditioning", display_name="ConditioningZeroOut", outputs=[CONDITIONING])
def ConditioningZeroOut(conditioning: Annotated[Cond, CONDITIONING]) -> list:
    """Zeros the tokens and pooled output (an empty negative for models trained that way)."""
    out = []
    for t, opts in conditioning:
        new = dict(opts)
        if new.get("pooled_output") is not None:
            new["pooled_output"] = torch.zeros_like(new["pooled_output"])
        out.append([torch.zeros_like(t), new])
    return out


@node(category="conditioning", display_name="Conditioning (Set Area)", outputs=[CONDITIONING])
def ConditioningSetArea(
    conditioning: Annotated[Cond, CONDITIONING],
    width: Annotated[int, Int(64, min=64, max=MAX_RESOLUTION, step=8)],
    height: Annotated[int, Int(64, min=64, max=MAX_RESOLUTION, step=8)],
    x: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    y: Annotated[int, Int(0, min=0, max=MAX_RESOLUTION, step=8)],
    strength: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01)],
) -> list:
    """Limits the conditioning to a rectangle, in pixels (stored in latent units)."""
    return _with(conditioning, area=(height // 8, width // 8, y // 8, x // 8), strength=strength,
                 set_area_to_bounds=False)


@node(category="conditioning", display_name="Conditioning (Set Area with Percentage)", outputs=[CONDITIONING])
def ConditioningSetAreaPercentage(
    conditioning: Annotated[Cond, CONDITIONING],
    width: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
    height: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
    x: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.01)],
    y: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.01)],
    strength: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01)],
) -> list:
    """Limits the conditioning to a rectangle given as fractions of the image."""
    return _with(conditioning, area=("percentage", height, width, y, x), strength=strength,
                 set_area_to_bounds=False)


@node(category="conditioning", display_name="ConditioningSetAreaStrength", outputs=[CONDITIONING])
def ConditioningSetAreaStrength(conditioning: Annotated[Cond, CONDITIONING],
                                strength: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01)]) -> list:
    """Sets the weight of the conditioning's entries."""
    return _with(conditioning, strength=strength)


@node(category="conditioning", display_name="Conditioning (Set Mask)", outputs=[CONDITIONING])
def ConditioningSetMask(
    conditioning: Annotated[Cond, CONDITIONING],
    mask: Annotated[Tensor, MASK],
    strength: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01)],
    set_cond_area: Annotated[str, Combo(["default", "mask bounds"], default="default")],
) -> list:
    """Weights the conditioning by a mask; "mask bounds" also limits it to the mask's box."""
    if mask.ndim < 3:
        mask = mask.unsqueeze(0)
    return _with(conditioning, mask=mask, set_area_to_bounds=set_cond_area != "default", mask_strength=strength)


@node(category="advanced/conditioning", display_name="ConditioningSetTimestepRange", outputs=[CONDITIONING])
def ConditioningSetTimestepRange(
    conditioning: Annotated[Cond, CONDITIONING],
    start: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.001)],
    end: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.001)],
) -> list:
    """Applies the conditioning only between two fractions of the sampling schedule."""
    return _with(conditioning, start_percent=start, end_percent=end)

