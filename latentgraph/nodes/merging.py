"""Model and CLIP merging nodes, with ComfyUI's names, inputs and factors (models/merge.py has the
arithmetic). Each returns a new MODEL or CLIP whose merged weights are new tensors; the inputs
are never changed, and the weights not merged are shared with the first input."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from ..graph import CLIP, MODEL, Float, node
from ..graph.declare import NodeDef
from ..graph.types import as_output
from ..graph.lazy import lazy
merge = lazy("..models.merge")
TextModel = lazy("..models.clip", "TextModel")
_families = lazy("..models.families")  # UNET_PREFIX, a str: read where used
from .sd import SDModel

_CATEGORY = "advanced/model_merging"
_MODULE = "comfy_extras.nodes_model_merging"
_RATIO = Float(1.0, min=0.0, max=1.0, step=0.01)
_MULTIPLIER = Float(1.0, min=-10.0, max=10.0, step=0.01)


def _merge_models(model1: SDModel, model2: SDModel, factors: merge.Factors, node_name: str) -> SDModel:
    what = f"{node_name}: model1 ({model1.arch.spec.label}) and model2 ({model2.arch.spec.label})"
    unet = merge.merge_modules(model1.unet, model2.unet, factors, what, key=lambda n: _families.UNET_PREFIX + n)
    # model1's options and sampling stay (ComfyUI's merge clones model1)
    return model1.clone(unet=unet)


def _merge_clips(clip1: TextModel, clip2: TextModel, factors: merge.Factors, node_name: str) -> TextModel:
    what = f"{node_name}: clip1 ({clip1.arch.spec.label}) and clip2 ({clip2.arch.spec.label})"
    return replace(clip1, encoders=merge.merge_encoders(clip1.encoders, clip2.encoders, factors, what))


@node(category=_CATEGORY, outputs=[MODEL], python_module=_MODULE)
def ModelMergeSimple(
    model1: Annotated[SDModel, MODEL],
    model2: Annotated[SDModel, MODEL],
    ratio: Annotated[float, _RATIO],
) -> SDModel:
    """ratio * model1 + (1 - ratio) * model2, weight by weight (ratio 1: model1 as it is)."""
    return _merge_models(model1, model2, merge.simple(ratio), "ModelMergeSimple")


@node(category=_CATEGORY, outputs=[MODEL], python_module=_MODULE)
def ModelMergeBlocks(
    model1: Annotated[SDModel, MODEL],
    model2: Annotated[SDModel, MODEL],
    input: Annotated[float, _RATIO],
    middle: Annotated[float, _RATIO],
    out: Annotated[float, _RATIO],
) -> SDModel:
    """ModelMergeSimple with a ratio per part of the UNet: ``input`` for input_blocks (and the
    time and label embeddings), ``middle`` for middle_block, ``out`` for output_blocks and out."""
    factors = merge.blocks({"input": input, "middle": middle, "out": out})
    return _merge_models(model1, model2, factors, "ModelMergeBlocks")


@node(category=_CATEGORY, outputs=[MODEL], python_module=_MODULE)
def ModelMergeSubtract(
    model1: Annotated[SDModel, MODEL],
    model2: Annotated[SDModel, MODEL],
    multiplier: Annotated[float, _MULTIPLIER],
) -> SDModel:
    """multiplier * (model1 - model2): a difference to add to another model, or to extract as a LoRA."""
    return _merge_models(model1, model2, merge.subtract(multiplier), "ModelMergeSubtract")


@node(category=_CATEGORY, outputs=[MODEL], python_module=_MODULE)
def ModelMergeAdd(
    model1: Annotated[SDModel, MODEL],
    model2: Annotated[SDModel, MODEL],
) -> SDModel:
    """model1 + model2, weight by weight (model2 typically a ModelMergeSubtract difference)."""
    return _merge_models(model1, model2, merge.add(), "ModelMergeAdd")


@node(category=_CATEGORY, outputs=[CLIP], python_module=_MODULE)
def CLIPMergeSimple(
    clip1: Annotated[TextModel, CLIP],
    clip2: Annotated[TextModel, CLIP],
    ratio: Annotated[float, _RATIO],
) -> TextModel:
    """ratio * clip1 + (1 - ratio) * clip2, for every text-encoder weight."""
    return _merge_clips(clip1, clip2, merge.simple(ratio), "CLIPMergeSimple")


@node(category=_CATEGORY, outputs=[CLIP], python_module=_MODULE)
def CLIPMergeSubtract(
    clip1: Annotated[TextModel, CLIP],
    clip2: Annotated[TextModel, CLIP],
    multiplier: Annotated[float, _MULTIPLIER],
) -> TextModel:
    """multiplier * (clip1 - clip2), for every text-encoder weight."""
    return _merge_clips(clip1, clip2, merge.subtract(multiplier), "CLIPMergeSubtract")


@node(category=_CATEGORY, outputs=[CLIP], python_module=_MODULE)
def CLIPMergeAdd(
    clip1: Annotated[TextModel, CLIP],
    clip2: Annotated[TextModel, CLIP],
) -> TextModel:
    """clip1 + clip2, for every text-encoder weight."""
    return _merge_clips(clip1, clip2, merge.add(), "CLIPMergeAdd")


# -- ComfyUI's model-specific block merges: one ratio per UNet block. Their input names are key
# prefixes ("input_blocks.3.", "out."), which no Python parameter can be named, so they are
# declared as NodeDefs (register_builtins adds a module's NODE_DEFS) rather than functions.
_SPECIFIC = "advanced/model_merging/model_specific"
_SPECIFIC_MODULE = "comfy_extras.nodes_model_merging_model_specific"


def _unet_blocks(levels: int, middle: int, dot: str) -> list[str]:
    """ComfyUI's input names: time_embed., label_emb., each input/middle/output block, out.
    (its SDXL node leaves the dot off the block names: "input_blocks.1" also starts
    "input_blocks.1x" keys, which an SDXL UNet with 9 input blocks does not have)."""
    return (["time_embed.", "label_emb."] + [f"input_blocks.{i}{dot}" for i in range(levels)]
            + [f"middle_block.{i}{dot}" for i in range(middle)] + [f"output_blocks.{i}{dot}" for i in range(levels)]
            + ["out."])


def _block_merge_node(name: str, blocks: list[str]) -> NodeDef:
    def merge_blocks(model1: SDModel, model2: SDModel, **ratios: float) -> SDModel:
        # the first block's ratio is the default (ComfyUI's), so the order is the declared one
        factors = merge.blocks({block: ratios[block] for block in blocks})
        return _merge_models(model1, model2, factors, name)

    return NodeDef(name=name, fn=merge_blocks, inputs={"model1": MODEL, "model2": MODEL, **{b: _RATIO for b in blocks}},
                   outputs=(as_output(MODEL),), category=_SPECIFIC, display_name=name,
                   description=f"ModelMergeBlocks with a ratio for each block of the UNet ({len(blocks)} ratios: the "
                               f"weights whose names start with the input's name).",
                   python_module=_SPECIFIC_MODULE)


_SD_BLOCKS = _unet_blocks(12, 3, ".")
NODE_DEFS = (_block_merge_node("ModelMergeSD1", _SD_BLOCKS), _block_merge_node("ModelMergeSD2", _SD_BLOCKS),
             _block_merge_node("ModelMergeSDXL", _unet_blocks(9, 3, "")))
