"""Diffusers-layout ControlNet files (diffusers' ControlNetModel, ``diffusion_pytorch_model.safetensors``)
read into the LDM layout that ``ControlNet`` mirrors.

This is a foreign layout, so a name table is the honest tool here (STYLE.md habit 4): the two
layouts hold the same tensors with the same shapes, only named differently. Transformer blocks
keep their inner names in both; ResBlocks rename five layers; the block numbering differs (diffusers
counts ``down_blocks.<level>.resnets.<j>``, LDM counts ``input_blocks.<n>`` over all levels).
"""

from __future__ import annotations

import re

import torch

from .errors import CheckpointError

TELLTALE = "controlnet_cond_embedding.conv_in.weight"

# ResBlock layers: diffusers name -> LDM name
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# the hint encoder: conv_in, blocks.0..5, conv_out are the convs at even indices of input_hint_block
HINT = {"conv_in": 0, **{f"blocks.{i}": 2 * (i + 1) for i in range(6)}, "conv_out": 14}
FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
         "conv_in": "input_blocks.0.0", "controlnet_mid_block": "middle_block_out.0",
         "mid_block.resnets.0": "middle_block.0", "mid_block.attentions.0": "middle_block.1",
         "mid_block.resnets.1": "middle_block.2",
         **{f"controlnet_cond_embedding.{k}": f"input_hint_block.{v}" for k, v in HINT.items()}}


def is_diffusers_controlnet(sd: dict) -> bool:
    return TELLTALE in sd


def _res_blocks_per_level(sd: dict) -> list[int]:
    """How many ResBlocks each down block holds, from the key names (levels may differ)."""
    counts: dict[int, int] = {}
    for key in sd:
        m = re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.", key)
        if m:
            level, j = int(m[1]), int(m[2])
            counts[level] = max(counts.get(level, 0), j + 1)
    if sorted(counts) != list(range(len(counts))) or not counts:
        raise ValueError(f"down_blocks levels {sorted(counts)} are not 0..n-1")
    return [counts[level] for level in range(len(counts))]


def _prefix_map(sd: dict) -> dict[str, str]:
    """Every diffusers module prefix -> its LDM prefix (ResBlocks marked with a trailing '|'
    so their inner layer names are renamed too)."""
    table = dict(FIXED)
    for name in ("mid_block.resnets.0", "mid_block.resnets.1"):
        table[name] = table[name] + "|"
    blocks = _res_blocks_per_level(sd)
    n = 1  # input_blocks.0 is conv_in
    for level, count in enumerate(blocks):
        for j in range(count):
            table[f"down_blocks.{level}.resnets.{j}"] = f"input_blocks.{n}.0|"
            table[f"down_blocks.{level}.attentions.{j}"] = f"input_blocks.{n}.1"
            table[f"controlnet_down_blocks.{n}"] = f"zero_convs.{n}.0"
            n += 1
        if level != len(blocks) - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            table[f"controlnet_down_blocks.{n}"] = f"zero_convs.{n}.0"
            n += 1
    table["controlnet_down_blocks.0"] = "zero_convs.0.0"
    return table


def _rename(key: str, table: dict[str, str]) -> str | None:
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest known module prefix wins
        target = table.get(".".join(parts[:cut]))
        if target is None:
            continue
        rest = parts[cut:]
        if target.endswith("|"):
            target, layer = target[:-1], RESNET.get(rest[0])
            if layer is None:
                return None
            rest = [layer, *rest[1:]]
        return ".".join([target, *rest])
    return None


def rename_tensors(sd: dict, table: dict, reject: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """(the tensors under their LDM names, the keys with no LDM name or whose name starts with one
    of ``reject``), renamed through a diffusers -> LDM prefix table."""
    out, unknown = {}, []
    for key, value in sd.items():
        name = _rename(key, table)
        if name is None or name.startswith(reject):
            unknown.append(key)
        else:
            out[name] = value
    return out, unknown


def diffusers_to_ldm(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The tensors of a diffusers-layout ControlNet under their LDM names (no ``control_model.``);
    an error listing any tensor that has no place in the LDM layout."""
    try:
        table = _prefix_map(sd)
    except ValueError as exc:
        raise CheckpointError(f"{source}: diffusers-format ControlNet not understood: {exc}") from None
    out, unknown = rename_tensors(sd, table)
    if unknown:
        raise CheckpointError(f"{source}: diffusers-format ControlNet with {len(unknown)} tensor(s) this loader "
                              f"cannot place (e.g. {', '.join(sorted(unknown)[:3])})")
    return out
