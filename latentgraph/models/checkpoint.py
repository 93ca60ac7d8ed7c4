"""Single-file checkpoints: read them safely, tell their family from keys and shapes, build
the networks and load every tensor strictly.

``.safetensors`` is memory-mapped; ``.ckpt``/``.pt``/``.pth``/``.bin`` go only through
``torch.load(weights_only=True)``, so a file that needs arbitrary pickled objects is refused.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .cast import hold_in_file_dtype, held_layers, holds, stream_into
from .errors import CheckpointError
from .families import FAMILIES, METADATA_KEY, TINY_UNCLIP_DIMS, UNET_PREFIX, VAE_PREFIX, Architecture, Family
from .text_encoders import (ClipTextEncoder, TextEncoderConfig, config_from_keys, hf_clip_keys, openclip_file_key,
                            openclip_keys, to_hf_clip_keys, to_openclip_keys)
from .unet import UNetConfig, UNetModel, unet_config_from_state_dict
from .management import ModelCache, Placement
from .variants import (apply_edm_markers, check_layout, check_vae_layout, refusal, refuse_markers, refuse_unknown,
                       unet_variant)
from .vae import AutoencoderKL, VAEConfig, vae_config_from_state_dict, vae_keys

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint file and its metadata (safetensors header, else {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix.lower() in PICKLE_SUFFIXES and not _holds_safetensors(path):
        return _read_pickle(path), {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None


def _holds_safetensors(path: Path) -> bool:
    """Whether a file named like a pickle (.pth, .ckpt, ...) holds safetensors data: an 8-byte
    little-endian header length that fits the file, then a JSON object. Such files are common
    (renamed downloads) and are read as safetensors, which runs nothing."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= size <= path.stat().st_size - 8


def _torch_message(exc: BaseException) -> str:
    """The telling part of a torch.load error: its WeightsUnpickler line if there is one, else its
    first line, without the terminal colour codes torch puts in some."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split())[:300]
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    # torch's zip format (torch >= 1.6) can be memory-mapped; the older format cannot
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        detail = _torch_message(exc)
        if "Unsupported global" not in detail:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
        raise CheckpointError(
            f"{path}: refused: the file needs Python objects that are not plain tensors to load "
            f"(torch.load(weights_only=True) said: {detail}). Only load pickled "
            f"checkpoints you trust; convert them to .safetensors to use them here.") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_torch_message(exc)})") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    # BasicSR's layout (RealESRGAN, SwinIR, HAT .pth upscale models): the EMA weights, else the plain ones
    for wrapper in ("params_ema", "params"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


# -- detection -----------------------------------------------------------------------------
def _has(sd: dict, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in sd)


def _text_family(sd: dict) -> str | None:
    if _has(sd, "conditioner.embedders.1.model.") and _has(sd, "conditioner.embedders.0.transformer."):
        return "sdxl"
    if _has(sd, "conditioner.embedders.0.model.") and not _has(sd, "conditioner.embedders.1."):
        return "sdxl_refiner"
    if _has(sd, "cond_stage_model.model."):
        return "sd2"
    if _has(sd, "cond_stage_model.transformer."):
        return "sd15"
    return None


def _unclip_family(sd: dict, unet: UNetConfig) -> str | None:
    """The unCLIP family of an SD2 checkpoint whose UNet takes CLIP image embeddings: a label_emb
    of a published width (1536: L, 2048: H), or any even width in a file with noise_augmentor.*
    (tiny files; L when the embeddings are 768 or tiny-L wide), else None."""
    adm = unet.adm_in_channels
    if adm in (1536, 2048):
        return "sd21_unclip_l" if adm == 1536 else "sd21_unclip_h"
    if adm and adm != 4 and adm % 2 == 0 and _has(sd, "noise_augmentor."):
        return "sd21_unclip_l" if adm // 2 in (768, TINY_UNCLIP_DIMS["sd21_unclip_l"]) else "sd21_unclip_h"
    return None


def _describe(sd: dict) -> str:
    """A short account of what a state dict holds, for error messages."""
    tops: dict[str, int] = {}
    for k in sd:
        head = ".".join(k.split(".")[:2]) if k.startswith(("model.", "cond_stage_model.", "conditioner.")) else k.split(".")[0]
        tops[head] = tops.get(head, 0) + 1
    parts = [f"{name}.* ({n})" for name, n in sorted(tops.items(), key=lambda kv: -kv[1])[:6]]
    return f"{len(sd)} tensors: " + ", ".join(parts)


def text_keys(sd: dict, slot) -> dict:
    return hf_clip_keys(sd, slot.prefix) if slot.layout == "hf" else openclip_keys(sd, slot.prefix)


def detect_architecture(sd: dict, metadata: dict | None = None, source: str = "checkpoint",
                        overrides: dict | None = None) -> Architecture:
    """The family and exact architecture of a checkpoint, from its metadata if it has our
    record, else from its keys and shapes. ``overrides`` sets what shapes cannot show
    (``unet_num_heads``, ``unet_num_head_channels``, ``text_num_heads``). Files latentgraph would
    sample wrongly (variant markers, a layout not the family's, unknown tensors) are refused."""
    refuse_markers(sd, source)
    if metadata and METADATA_KEY in metadata:
        try:
            arch = Architecture.from_json(metadata[METADATA_KEY])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: its {METADATA_KEY} metadata is unreadable: {exc}") from None
    else:
        arch = _from_keys(sd, source, overrides or {})
    arch = apply_edm_markers(sd, arch, source)
    check_layout(arch, source)
    refuse_unknown(sd, arch.spec, source)
    return arch


def _unet_config(unet_sd: dict, source: str, **heads) -> UNetConfig:
    try:
        return unet_config_from_state_dict(unet_sd, **heads)
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{source}: the UNet's layout is not one latentgraph knows ({exc})") from None


def _from_keys(sd: dict, source: str, overrides: dict) -> Architecture:
    unet_sd = {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}
    if "input_blocks.0.0.weight" not in unet_sd:
        raise CheckpointError(f"{source}: not a Stable Diffusion checkpoint: no UNet under "
                              f"'{UNET_PREFIX}' ({_describe(sd)})")
    family_name = _text_family(sd)
    probe = _unet_config(unet_sd, source)
    if family_name is None:
        variant = unet_variant(probe)
        if variant is not None:  # say what it is before saying what is missing
            raise refusal(source, variant)
        by_context = {768: "sd15", 1024: "sd2", 2048: "sdxl", 1280: "sdxl_refiner"}
        guess = by_context.get(probe.context_dim, "an unknown family")
        if probe.context_dim == 1024 and _unclip_family(sd, probe):
            guess = f"{_unclip_family(sd, probe)} (its label_emb takes {probe.adm_in_channels} values)"
        raise CheckpointError(
            f"{source}: no text encoder found (no cond_stage_model.* or conditioner.embedders.*); the UNet's "
            f"context width {probe.context_dim} suggests {guess}. "
            f"UNet-only files belong in diffusion_models/ ({_describe(sd)})")
    if family_name == "sd2":
        family_name = _unclip_family(sd, probe) or family_name
    family = FAMILIES[family_name]
    text = {slot.name: _text_config(sd, slot, family, source, overrides.get("text_num_heads")) for slot in family.text}
    heads = {}
    if "unet_num_heads" in overrides or "unet_num_head_channels" in overrides:
        heads = dict(num_heads=overrides.get("unet_num_heads"), num_head_channels=overrides.get("unet_num_head_channels"))
    unet = _unet_config(unet_sd, source, **heads) if heads else probe
    vae_sd = {k[len(VAE_PREFIX):]: v for k, v in sd.items() if k.startswith(VAE_PREFIX)}
    if not vae_sd:
        raise CheckpointError(f"{source}: no VAE under '{VAE_PREFIX}' ({_describe(sd)})")
    vae = _vae_config(vae_keys(vae_sd), source, VAE_PREFIX)
    prediction, zsnr = _prediction(family, sd, unet.in_channels)
    return Architecture(family.name, unet, vae, text, prediction, zsnr)


def _text_config(sd: dict, slot, family: Family, source: str, num_heads: int | None) -> TextEncoderConfig:
    keys = text_keys(sd, slot)
    if "transformer.embeddings.token_embedding.weight" not in keys:
        raise CheckpointError(f"{source}: {family.label} text encoder '{slot.name}' is incomplete under "
                              f"'{slot.prefix}' ({_describe(sd)})")
    try:
        return config_from_keys(keys, slot.act, num_heads)
    except KeyError as exc:
        raise CheckpointError(f"{source}: {family.label} text encoder '{slot.name}' under '{slot.prefix}' "
                              f"lacks {exc.args[0]} (in our naming)") from None
    except (ValueError, IndexError) as exc:
        raise CheckpointError(f"{source}: {family.label} text encoder '{slot.name}' under '{slot.prefix}' has "
                              f"a layout latentgraph cannot read ({exc})") from None


def _vae_config(vae_sd: dict, source: str, prefix: str) -> VAEConfig:
    try:
        return vae_config_from_state_dict(vae_sd)
    except (KeyError, ValueError, IndexError) as exc:
        where = ""
        if "multiple of 32" in str(exc):  # the widths come from these tensors' shapes
            where = f" (read from {prefix}encoder.conv_in.weight and {prefix}encoder.down.*)"
        raise CheckpointError(f"{source}: not a VAE latentgraph can read ({exc}){where}") from None


def _prediction(family: Family, sd: dict, in_channels: int = 4) -> tuple[str, bool]:
    """eps or v, and zero terminal SNR, from marker keys (v_pred/ztsnr) or, for SD2,
    ComfyUI's heuristic: a 768-v model has a wide spread of this norm bias (not applied to
    inpainting UNets, which are all eps; applied to SD2.1-unCLIP, an SD2 model to ComfyUI)."""
    if "v_pred" in sd:
        return "v", "ztsnr" in sd
    if (family.name == "sd2" or family.unclip_dim is not None) and in_channels == 4:
        key = UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
        if key in sd and not sd[key].is_meta and float(sd[key].float().std(unbiased=False)) > 0.09:
            return "v", False
    return "eps", "ztsnr" in sd


# -- building and loading ------------------------------------------------------------------
@dataclass
class Checkpoint:
    """The loaded networks of one file."""

    arch: Architecture
    unet: UNetModel
    vae: AutoencoderKL
    text: dict[str, ClipTextEncoder]
    source: str = ""


def build_text_encoders(arch: Architecture) -> dict[str, ClipTextEncoder]:
    roles = {slot.name: slot.role for slot in arch.spec.text}
    return {name: ClipTextEncoder(cfg, roles[name]) for name, cfg in arch.text.items()}


def split_state_dict(sd: dict, arch: Architecture) -> dict[str, dict]:
    """The tensors of each network, keyed as our modules name them."""
    parts = {
        "unet": {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)},
        "vae": vae_keys(sd, VAE_PREFIX),  # the networks only: a training checkpoint's loss weights stay out
    }
    for slot in arch.spec.text:
        parts["text." + slot.name] = text_keys(sd, slot)
    return parts


def check_shapes(module: torch.nn.Module, sd: dict, what: str, source: str,
                 file_key: Callable[[str], str] = str, linear_as_conv: bool = False) -> None:
    """Every tensor the module has a place for must have that place's shape (and be floating
    point where the module is), checked before anything is loaded or run; the error names the
    file's keys. ``linear_as_conv``: (C, C) stands for a (C, C, 1, 1) kernel (the VAE's attention)."""
    expected = module.state_dict(keep_vars=True)
    wrong = []
    for key, value in sd.items():
        want = expected.get(key)
        if want is None:
            continue  # unexpected keys are strict_load's to report
        found, shape = tuple(value.shape), tuple(want.shape)
        if found != shape and not (linear_as_conv and len(found) == 2 and shape == (*found, 1, 1)):
            wrong.append(f"{file_key(key)} is {found}, expected {shape}")
        elif want.is_floating_point() and not value.is_floating_point():
            wrong.append(f"{file_key(key)} holds {value.dtype}, expected floating point")
    if wrong:
        more = f" ... ({len(wrong)} in all)" if len(wrong) > 5 else ""
        count = f"1 {what} tensor does" if len(wrong) == 1 else f"{len(wrong)} {what} tensors do"
        raise CheckpointError(f"{source}: {count} not fit the {what} the file's other tensors describe: "
                              + "; ".join(wrong[:5]) + more)


def strict_load(module: torch.nn.Module, sd: dict, what: str, source: str, dtype: torch.dtype | None,
                file_key: Callable[[str], str] = str, linear_as_conv: bool = False,
                held: Callable[[str], bool] | None = None) -> None:
    """Load every tensor or fail, naming the wrong shapes, then the missing and unexpected keys
    (both checked before anything is loaded). Tensors are converted to ``dtype`` and assigned
    one at a time, their file pages given back as they go (models/cast.py stream_into): the
    peak is the module plus one tensor, and a tensor already in ``dtype`` is not copied."""
    check_shapes(module, sd, what, source, file_key, linear_as_conv)
    expected = module.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if _unexpected(module, k)]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")

        msg = [f"{source}: the {what} does not match the detected architecture"]
        if missing:
            msg.append(f"missing keys: {show(missing)}")
        if unexpected:
            msg.append(f"unexpected keys: {show(unexpected)}")
        raise CheckpointError("; ".join(msg))
    stream_into(module, {k: v for k, v in sd.items() if k in expected}, dtype, source, held)


def _unexpected(module: torch.nn.Module, key: str) -> bool:
    """Whether load_state_dict(strict=True) would call ``key`` unexpected: its first name at
    the deepest module it reaches is neither a child nor a parameter or persistent buffer."""
    node, rest = module, key
    while True:
        first, _, tail = rest.partition(".")
        if first in node._modules:
            child = node._modules[first]
            if child is None or not tail:
                return False  # torch passes such keys over without a word
            node, rest = child, tail
            continue
        held = node._parameters.get(first) is not None or (
            node._buffers.get(first) is not None and first not in node._non_persistent_buffers_set)
        return not held


def _build(what: str, source: str, make: Callable[[], Any]) -> Any:
    """Build a network on the meta device; shapes no network has are the file's fault."""
    try:
        with torch.device("meta"):
            return make()
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"{source}: the {what} cannot be built from the shapes in the file ({exc})") from None


def check_unet_widths(cfg: UNetConfig, source: str) -> None:
    """Each level's width must be a multiple of 32 (the GroupNorm groups): name the tensor the
    width was read from rather than let GroupNorm fail without saying which file or tensor."""
    n, widths = 1, [("input_blocks.0.0.weight", cfg.model_channels)]
    for level, mult in enumerate(cfg.channel_mult):
        widths.append((f"input_blocks.{n}.0.out_layers.3.weight", cfg.model_channels * mult))
        n += cfg.num_res_blocks[level] + 1  # the level's ResBlocks and its Downsample
    for key, width in widths:
        if width <= 0 or width % 32:
            raise CheckpointError(
                f"{source}: {UNET_PREFIX}{key} makes a UNet level {width} channels wide, which is not a positive "
                f"multiple of 32 (the GroupNorm groups): that tensor has the wrong shape, or this is not a "
                f"Stable Diffusion UNet")


def text_file_key(slot, key: str, names: set[str]) -> str:
    """The file's name for one of our text-encoder keys (for messages)."""
    if slot.layout == "openclip":
        return openclip_file_key(key, slot.prefix)
    rest = key[len("transformer."):] if key.startswith("transformer.") else key
    if key == "text_projection.weight":
        stored = [slot.prefix + n for n in ("text_projection.weight", "text_projection") if slot.prefix + n in names]
        return stored[0] if stored else slot.prefix + "text_projection.weight"
    with_model = slot.prefix + "text_model." + rest
    return with_model if with_model in names or slot.prefix + rest not in names else slot.prefix + rest


# The layers whose weight dtype is the dtype a network casts its input to (AutoencoderKL.dtype
# reads quant_conv's): never held narrower, so the network computes in the run dtype.
HOLD_SKIP = {"vae": ("quant_conv", "post_quant_conv"), "text": ()}
# Run once per prompt, so a per-layer cast costs little; not the UNet, which runs every step.
HELD_ROLES = ("text", "vae")


def _hold(module: torch.nn.Module, role: str, tensors: dict, dtypes: dict, hold: tuple):
    """(held for strict_load, the layers to turn into cast layers after it) of one network."""
    if role not in hold or dtypes.get(role) is None:
        return None, set()
    layers = held_layers(module, HOLD_SKIP[role])
    return holds(layers, tensors, dtypes[role]), layers


def load_checkpoint(path: str | Path, *, dtypes: dict[str, torch.dtype] | None = None,
                    overrides: dict | None = None, parts: tuple = ("unet", "vae", "text"),
                    hold: tuple = ()) -> Checkpoint:
    """Read, detect and build a checkpoint's networks on the CPU (move them with .to()).
    ``dtypes`` per role ("unet", "vae", "text"); default: the file's dtype. The roles in
    ``hold`` (of HELD_ROLES) keep the file's weights where they are narrower than their dtype
    and cast them per layer as they run (models/cast.py): the same results in less memory."""
    source = str(path)
    sd, metadata = read_state_dict(path)
    arch = detect_architecture(sd, metadata, source, overrides)
    tensors = split_state_dict(sd, arch)
    names = set(sd)
    del sd
    dtypes = dtypes or {}
    unet = vae = None
    text: dict[str, ClipTextEncoder] = {}
    if "unet" in parts:
        check_unet_widths(arch.unet, source)
        unet = _build("UNet", source, lambda: UNetModel(arch.unet))
        strict_load(unet, tensors["unet"], "UNet", source, dtypes.get("unet"), lambda k: UNET_PREFIX + k)
    if "vae" in parts:
        vae = _build("VAE", source, lambda: AutoencoderKL(arch.vae))
        held, layers = _hold(vae, "vae", tensors["vae"], dtypes, hold)
        strict_load(vae, tensors["vae"], "VAE", source, dtypes.get("vae"), lambda k: VAE_PREFIX + k, True, held)
        hold_in_file_dtype(vae, layers, dtypes.get("vae"))
    if "text" in parts:
        text = _build("text encoders", source, lambda: build_text_encoders(arch))
    slots = {slot.name: slot for slot in arch.spec.text}
    for name, enc in text.items():
        held, layers = _hold(enc, "text", tensors["text." + name], dtypes, hold)
        strict_load(enc, tensors["text." + name], f"text encoder '{name}'", source, dtypes.get("text"),
                    lambda k, slot=slots[name]: text_file_key(slot, k, names), held=held)
        hold_in_file_dtype(enc, layers, dtypes.get("text"))
        _materialise_buffers(enc)
    for module in (unet, vae):
        if module is not None:
            _materialise_buffers(module)
            module.eval().requires_grad_(False)
    for enc in text.values():
        enc.eval().requires_grad_(False)
    return Checkpoint(arch, unet, vae, text, source)


def _materialise_buffers(module: torch.nn.Module) -> None:
    """Non-persistent buffers (not in files) are still on the meta device after an assign
    load; recreate them on the CPU."""
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            if attr == "position_ids":
                owner.register_buffer(attr, torch.arange(buf.shape[-1]).expand(buf.shape), persistent=False)
            else:
                owner.register_buffer(attr, torch.zeros(buf.shape, dtype=buf.dtype), persistent=False)


def load_vae_file(path: str | Path, dtype: torch.dtype | None = None, hold: bool = False) -> AutoencoderKL:
    """A standalone VAE file (``vae-ft-mse-840000-ema-pruned.safetensors``, ``sdxl_vae``):
    keys with no prefix or under ``first_stage_model.``; EMA copies and loss weights are skipped.
    ``hold``: keep an fp16/bf16 file's weights and cast per layer (see HELD_ROLES)."""
    source = str(path)
    sd, _ = read_state_dict(path)
    prefix = ""
    tensors = vae_keys(sd)
    if not tensors:
        prefix, tensors = VAE_PREFIX, vae_keys(sd, VAE_PREFIX)
    if not tensors:
        raise CheckpointError(f"{source}: not a VAE: no encoder./decoder. tensors ({_describe(sd)})")
    config = _vae_config(tensors, source, prefix)
    check_vae_layout(config, source)
    vae = _build("VAE", source, lambda: AutoencoderKL(config))
    held, layers = _hold(vae, "vae", tensors, {"vae": dtype}, HELD_ROLES if hold else ())
    strict_load(vae, tensors, "VAE", source, dtype, lambda k: prefix + k, True, held)
    hold_in_file_dtype(vae, layers, dtype)
    _materialise_buffers(vae)
    return vae.eval().requires_grad_(False)


def file_key(path: str | Path) -> tuple:
    """A file's identity for caches: resolved path, size, modification time."""
    st = Path(path).stat()
    return (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def load_placed(path: str | Path, placement: Placement, cache: ModelCache | None = None,
                overrides: dict | None = None) -> Checkpoint:
    """load_checkpoint in the placement's dtypes, moved to where the weights rest (the device,
    or the CPU in low-memory mode); through ``cache`` when given, keyed by the file's
    identity, the placement and the overrides."""
    # on the CPU, text encoders and VAE keep an fp16/bf16 file's weights (exact: see HELD_ROLES)
    hold = HELD_ROLES if placement.device.type == "cpu" else ()

    def load() -> Checkpoint:
        ck = load_checkpoint(path, dtypes=placement.dtypes, overrides=overrides, hold=hold)
        ck.unet.to(placement.home)
        ck.vae.to(placement.home)
        for enc in ck.text.values():
            enc.to(placement.home)
        return ck

    if cache is None:
        return load()
    key = ("checkpoint", *file_key(path), placement.key(), tuple(sorted((overrides or {}).items())))
    return cache.get_or_load(key, load)


# -- writing (make-checkpoint, tests) ------------------------------------------------------
def original_layout(arch: Architecture, unet: torch.nn.Module, vae: torch.nn.Module,
                    text: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Our modules' tensors in the original single-file key layout of the family."""
    out: dict[str, Any] = {}
    for k, v in unet.state_dict().items():
        out[UNET_PREFIX + k] = v
    for k, v in vae.state_dict().items():
        out[VAE_PREFIX + k] = v
    for slot in arch.spec.text:
        sd = text[slot.name].state_dict()
        if slot.layout == "hf":
            out.update(to_hf_clip_keys(sd, slot.prefix + "text_model."))
        else:
            out.update(to_openclip_keys(sd, slot.prefix))
            out[slot.prefix + "logit_scale"] = torch.tensor(4.6052)  # log(1/0.07), as OpenCLIP stores it
    if arch.prediction == "v" and arch.family != "sd2" and arch.spec.unclip_dim is None and arch.sigma_range is None:
        out["v_pred"] = torch.tensor([])
    if arch.zsnr:
        out["ztsnr"] = torch.tensor([])
    return {k: v.contiguous() for k, v in out.items()}


def save_checkpoint(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    """Write a safetensors file whose bytes depend only on its contents: safetensors writes
    the metadata in hash-map order, which changes from call to call, so the header is
    rewritten in place with the metadata keys sorted (same length, same tensor offsets)."""
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # cannot happen for a reordering; keep the file as written
            return
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


UNCLIP_VISION_PREFIX = "embedder.model.visual."


def load_unclip_vision(path: str | Path, dtype: torch.dtype | None = None):
    """The CLIP image encoder of an unCLIP checkpoint (``embedder.model.visual.``, OpenCLIP layout),
    or None when the file has none (ComfyUI's unCLIPCheckpointLoader gives None then, too)."""
    from .clip_vision import load_clip_vision

    source = str(path)
    sd, metadata = read_state_dict(path)
    if not _has(sd, UNCLIP_VISION_PREFIX):
        return None
    return load_clip_vision(sd, source, UNCLIP_VISION_PREFIX, metadata, dtype)
