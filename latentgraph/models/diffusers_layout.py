"""The diffusers layout of SD1.x/SD2.x/SDXL parts, read into (and written from) the LDM layout
our modules mirror: a UNet (``UNet2DConditionModel``: ``down_blocks.*``, ``mid_block.*``,
``up_blocks.*``), a VAE (``AutoencoderKL``: ``encoder.down_blocks.*``, attention projections as
Linear (C, C) where LDM has 1x1 convs (C, C, 1, 1)), and a diffusers folder
(``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``text_encoder_2/``).

A name table is the honest tool for a foreign layout (STYLE.md habit 4). The UNet's down half
and middle are named as in a diffusers ControlNet, so its table (models/controlnet_convert.py)
is extended with the up half here; the writer goes the other way through the LoRA loader's
module map (models/lora.py ``diffusers_unet_names``), so reading and writing are checked against
two independent tables by the round trip in tests/test_split_loaders.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .controlnet_convert import _prefix_map, rename_tensors
from .errors import CheckpointError

UNET_TELLTALE = "conv_in.weight"
# a diffusers folder's file names, in the order ComfyUI's DiffusersLoader tries them
DIFFUSION_FILES = ("diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.fp16.bin", "diffusion_pytorch_model.bin")
TEXT_FILES = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin", "pytorch_model.bin")


def is_diffusers_unet(sd: dict) -> bool:
    return UNET_TELLTALE in sd and any(k.startswith("down_blocks.") for k in sd)


def _up_levels(sd: dict) -> list[int]:
    """How many ResBlocks each up block holds (level 0 = the deepest, as diffusers counts)."""
    counts: dict[int, int] = {}
    for key in sd:
        m = re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.", key)
        if m:
            counts[int(m[1])] = max(counts.get(int(m[1]), 0), int(m[2]) + 1)
    if not counts or sorted(counts) != list(range(len(counts))):
        raise ValueError(f"up_blocks levels {sorted(counts)} are not 0..n-1")
    return [counts[level] for level in range(len(counts))]


def unet_table(sd: dict) -> dict[str, str]:
    """Every diffusers UNet module prefix -> its LDM prefix ('|' marks a ResBlock, whose layers
    are renamed too): the ControlNet table for the down half and middle, plus the up half."""
    table = _prefix_map(sd)
    table.update({"conv_norm_out": "out.0", "conv_out": "out.2"})
    n = 0
    for level, count in enumerate(_up_levels(sd)):
        for j in range(count):
            attention = any(k.startswith(f"up_blocks.{level}.attentions.{j}.") for k in sd)
            table[f"up_blocks.{level}.resnets.{j}"] = f"output_blocks.{n}.0|"
            if attention:
                table[f"up_blocks.{level}.attentions.{j}"] = f"output_blocks.{n}.1"
            if j == count - 1:  # the level's upsampler follows its last ResBlock (and transformer)
                table[f"up_blocks.{level}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if attention else 1}.conv"
            n += 1
    return table


def diffusers_unet_to_ldm(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A diffusers UNet's tensors under their LDM names (no ``model.diffusion_model.``); an error
    naming the tensors that have no place in the LDM layout."""
    try:
        table = unet_table(sd)
    except ValueError as exc:
        raise CheckpointError(f"{source}: diffusers-format UNet not understood: {exc}") from None
    # a ControlNet's own parts have LDM names too, but no place in a UNet
    out, unknown = rename_tensors(sd, table, reject=("zero_convs.", "input_hint_block.", "middle_block_out."))
    if unknown:
        raise CheckpointError(f"{source}: diffusers-format UNet with {len(unknown)} tensor(s) latentgraph cannot "
                              f"place (e.g. {', '.join(sorted(unknown)[:3])}): not an SD1.x/SD2.x/SDXL UNet")
    return out


def ldm_unet_to_diffusers(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Our UNet's tensors under diffusers' names (for make-checkpoint)."""
    from .lora import diffusers_unet_names

    names = diffusers_unet_names(unet)
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module not in names:
            raise KeyError(f"no diffusers name for {key}")  # our table would be incomplete
        out[f"{names[module]}.{param}"] = value
    return out


# -- VAE ------------------------------------------------------------------------------------
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
             "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}
_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}


def is_diffusers_vae(sd: dict) -> bool:
    return any(k.startswith(("encoder.down_blocks.", "decoder.up_blocks.")) for k in sd)


def _vae_name(key: str, up_levels: int) -> str | None:
    """One diffusers VAE key -> its LDM name (None: no place for it)."""
    side, _, rest = key.partition(".")
    if side in ("quant_conv", "post_quant_conv"):
        return key
    if side not in ("encoder", "decoder"):
        return None
    fixed = {"conv_in": "conv_in", "conv_out": "conv_out", "conv_norm_out": "norm_out"}
    head, _, param = rest.rpartition(".")
    if head in fixed:
        return f"{side}.{fixed[head]}.{param}"
    m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets\.(\d+)\.(\w+)|(down|up)samplers\.0\.conv)", head)
    if m:
        level = int(m[2]) if m[1] == "down" else up_levels - 1 - int(m[2])
        if m[4] is None:
            return f"{side}.{m[1]}.{level}.{m[1]}sample.conv.{param}"
        layer = _VAE_RESNET.get(m[5])
        return None if layer is None else f"{side}.{m[1]}.{level}.block.{m[4]}.{layer}.{param}"
    m = re.fullmatch(r"mid_block\.(resnets\.(\d)\.(\w+)|attentions\.0\.(.+))", head)
    if m and m[2] is not None and m[3] in _VAE_RESNET:
        return f"{side}.mid.block_{int(m[2]) + 1}.{_VAE_RESNET[m[3]]}.{param}"
    if m and m[4] in _VAE_ATTN:
        return f"{side}.mid.attn_1.{_VAE_ATTN[m[4]]}.{param}"
    return None


def diffusers_vae_to_ldm(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """A diffusers VAE's tensors under LDM names, attention projections as 1x1 convs."""
    up_levels = len({int(m[1]) for k in sd for m in [re.match(r"decoder\.up_blocks\.(\d+)\.", k)] if m})
    out, unknown = {}, []
    for key, value in sd.items():
        name = _vae_name(key, up_levels)
        if name is None:
            unknown.append(key)
            continue
        if ".attn_1." in name and name.endswith(".weight") and value.ndim == 2 and not name.endswith("norm.weight"):
            value = value.reshape(*value.shape, 1, 1)  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
        out[name] = value
    if unknown:
        raise CheckpointError(f"{source}: diffusers-format VAE with {len(unknown)} tensor(s) latentgraph cannot "
                              f"place (e.g. {', '.join(sorted(unknown)[:3])})")
    return out


def ldm_vae_to_diffusers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our VAE's tensors under diffusers' current names (for make-checkpoint): the inverse of
    diffusers_vae_to_ldm with to_q/to_k/to_v/to_out.0 Linear weights."""
    up_levels = len({int(m[1]) for k in sd for m in [re.match(r"decoder\.up\.(\d+)\.", k)] if m})
    resnet = {v: k for k, v in _VAE_RESNET.items()}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    out = {}
    for key, value in sd.items():
        side, _, rest = key.partition(".")
        head, _, param = rest.rpartition(".")
        name = key
        if head in ("norm_out",):
            name = f"{side}.conv_norm_out.{param}"
        elif m := re.fullmatch(r"(down|up)\.(\d+)\.(block\.(\d+)\.(\w+)|(down|up)sample\.conv)", head):
            level = int(m[2]) if m[1] == "down" else up_levels - 1 - int(m[2])
            inner = f"{m[1]}samplers.0.conv" if m[4] is None else f"resnets.{m[4]}.{resnet[m[5]]}"
            name = f"{side}.{m[1]}_blocks.{level}.{inner}.{param}"
        elif m := re.fullmatch(r"mid\.block_(\d)\.(\w+)", head):
            name = f"{side}.mid_block.resnets.{int(m[1]) - 1}.{resnet[m[2]]}.{param}"
        elif m := re.fullmatch(r"mid\.attn_1\.(\w+)", head):
            name = f"{side}.mid_block.attentions.0.{attn[m[1]]}.{param}"
            if m[1] != "norm" and param == "weight":
                value = value.reshape(value.shape[0], value.shape[1])
        out[name] = value
    return out


# -- a diffusers folder ---------------------------------------------------------------------
def first_file(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


def folder_parts(folder: str | Path) -> dict[str, Path | None]:
    """The files of a diffusers folder ComfyUI reads: unet, vae, text_encoder, text_encoder_2."""
    folder = Path(folder)
    return {"unet": first_file(folder / "unet", DIFFUSION_FILES), "vae": first_file(folder / "vae", DIFFUSION_FILES),
            "text_encoder": first_file(folder / "text_encoder", TEXT_FILES),
            "text_encoder_2": first_file(folder / "text_encoder_2", TEXT_FILES)}

