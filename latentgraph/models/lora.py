"""LoRA: read LoRA files in the common namings, match their keys to our modules, and make
patched copies of a UNet or text encoder that share every untouched tensor with the base.

A LoRA key is a *module name* and a suffix. Module names understood, per family:

- kohya / A1111: ``lora_unet_`` + a UNet module path with dots as underscores, in the LDM
  layout (``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q``) or the diffusers one
  (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``); ``lora_te_`` or
  ``lora_te1_`` (first text encoder) and ``lora_te2_`` (SDXL's bigG) + the transformers CLIP
  path (``text_model_encoder_layers_0_self_attn_q_proj``).
- LDM keys: ``model.diffusion_model.<path>`` or ``diffusion_model.<path>``; text encoders under
  the checkpoint's own prefixes and names (OpenCLIP names for SD2's ViT-H and SDXL's bigG).
- diffusers / PEFT: ``unet.<diffusers path>`` or the bare path, attention-processor names
  (``attn1.processor.to_q``), ``text_encoder.<transformers path>``, ``text_encoder_2.<...>``.

Suffixes: ``.lora_up.weight``/``.lora_down.weight`` with optional ``.alpha`` and LoCon's
``.lora_mid.weight``; ``.lora_B.weight``/``.lora_A.weight``; ``.lora.up.weight``,
``_lora.up.weight`` and ``.lora_linear_layer.up.weight`` (older diffusers, with their
``down``); full deltas ``.diff`` (weight) and ``.diff_b`` (bias), and LyCORIS' trained norms
``.w_norm``/``.b_norm`` (full deltas too). A low-rank patch adds
``strength * alpha / rank * (up @ down)`` to the weight (scale 1 without alpha). LoHa, LoKr,
GLoRA, OFT, BOFT, ``set_weight`` and DoRA's ``.dora_scale`` are in lora_algos.py.

Keys that apply nowhere (a module this model lacks, a kind ComfyUI does not apply either, an
incomplete adapter) do not stop the rest: ``load_lora`` returns them, grouped, as a warning
(lora_formats.py) that the nodes show. A file of which no key applies, and a tensor that does
not fit its weight, are errors. Harmless leftovers pass silently: an alpha with no pair, and keys
for a part not being patched (the text encoders in a model-only load).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .cast import patched_dtype
from .checkpoint import CheckpointError, read_state_dict
from .families import FAMILIES, TextSlot
from .lora_algos import (ADAPTER_KIND, ADAPTER_SUFFIXES, Adapter, IncompleteAdapter, build_adapter, dora_fits,
                         weight_decompose)
from .lora_formats import ROLE_KIND, TEXT_NAME_PREFIXES, describe_format, group_report, unsupported_kind
from .text_encoders import _OPENCLIP_LAYER
from .unet import Downsample, ResBlock, SpatialTransformer, UNetModel, Upsample


log = logging.getLogger("latentgraph.lora")


class LoraError(ValueError):
    """A LoRA file could not be read, or does not fit the model it is applied to."""


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a LoRA file: safetensors, or a plain-tensor pickle (``.pt``/``.ckpt``/
    ``.bin``) read with ``torch.load(weights_only=True)``; anything else in a pickle is refused."""
    try:
        sd, _ = read_state_dict(path)
    except CheckpointError as exc:
        raise LoraError(str(exc)) from None
    if not sd:
        raise LoraError(f"{path}: holds no tensors")
    return sd


# -- patches --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class LowRank:
    """A low-rank delta ``alpha / rank * (up @ down)``; with ``mid`` (LoCon's Tucker core) the
    down projection first goes through the mid kernel."""

    up: torch.Tensor  # (out, rank) or (out, rank, 1, 1)
    down: torch.Tensor  # (rank, in), (rank, in, kh, kw) or, with mid, (rank, in, 1, 1)
    mid: torch.Tensor | None = None  # (rank, rank, kh, kw)
    alpha: float | None = None
    dora: torch.Tensor | None = None  # DoRA's magnitude: (out, 1, ...) or (1, in, ...)

    def __post_init__(self):
        rank = self.down.shape[0]
        if self.up.dim() < 2 or self.down.dim() < 2 or self.up.flatten(1).shape[1] != rank:
            raise ValueError(f"up {tuple(self.up.shape)} and down {tuple(self.down.shape)} do not share a rank")
        if self.mid is not None and (self.mid.dim() != 4 or tuple(self.mid.shape[:2]) != (rank, rank)
                                     or self.down[0].numel() != self.down.shape[1]):
            raise ValueError(f"mid {tuple(self.mid.shape)} is not a ({rank}, {rank}, kh, kw) core for down "
                             f"{tuple(self.down.shape)} with 1x1 kernels")

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank if self.alpha is not None else 1.0

    def fits(self, shape: torch.Size) -> bool:
        cols = self.down[0].numel() * (self.mid[0, 0].numel() if self.mid is not None else 1)
        return (len(shape) >= 2 and shape[0] == self.up.shape[0] and shape.numel() == self.up.shape[0] * cols
                and dora_fits(self.dora, shape))

    def product(self, device: torch.device) -> torch.Tensor:
        """``up @ down`` in float32, (out, in * kh * kw), without alpha or strength."""
        up = self.up.to(device, torch.float32).flatten(1)  # (out, rank)
        down = self.down.to(device, torch.float32).flatten(1)  # (rank, in * kh * kw)
        if self.mid is not None:
            mid = self.mid.to(device, torch.float32)  # (rank, rank, kh, kw)
            down = torch.einsum("rshw,si->rihw", mid, down).flatten(1)  # (rank, in * kh * kw)
        return up @ down

    def delta(self, shape: torch.Size, strength: float, device: torch.device) -> torch.Tensor:
        """``strength * scale * (up @ down)`` in float32, reshaped to ``shape``."""
        return ((strength * self.scale) * self.product(device)).reshape(shape)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        """The new float32 weight: ``weight + delta``, or DoRA's renormalised sum."""
        if self.dora is None:
            return weight + self.delta(weight.shape, strength, weight.device)
        diff = self.product(weight.device).reshape(weight.shape)
        return weight_decompose(self.dora, weight, diff, self.scale, strength)


@dataclass(frozen=True, eq=False)
class Diff:
    """A full delta of one weight or bias."""

    diff: torch.Tensor

    def fits(self, shape: torch.Size) -> bool:
        return self.diff.numel() == shape.numel() and (len(shape) == 0 or self.diff.shape[0] == shape[0])

    def delta(self, shape: torch.Size, strength: float, device: torch.device) -> torch.Tensor:
        return (strength * self.diff.to(device, torch.float32)).reshape(shape)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return weight + self.delta(weight.shape, strength, weight.device)


Patch = LowRank | Diff | Adapter


# -- our module paths under their LoRA names ------------------------------------------------
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_UNET_TOP = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
             "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
             "label_emb.0.2": "add_embedding.linear_2", "out.0": "conv_norm_out", "out.2": "conv_out"}
_TO_OPENCLIP = {ours: openclip for openclip, ours in _OPENCLIP_LAYER.items()}  # "mlp.fc1" -> "mlp.c_fc"
# kohya and diffusers prefixes of a family's text encoders, by position in the family
_TEXT_PREFIXES = ((("lora_te_", "lora_te1_"), ("text_encoder.",)), (("lora_te2_",), ("text_encoder_2.",)))


def _weight_modules(module: nn.Module) -> list[str]:
    """Paths of the modules that own a ``weight`` parameter."""
    return [name[: -len(".weight")] for name, _ in module.named_parameters() if name.endswith(".weight")]


def _layer_names(block: nn.Module, prefix: str, i: int) -> dict[str, tuple[str, dict | None]]:
    """diffusers names of the layers of one numbered block (the ``i``-th of its level, under
    ``prefix``: ``down_blocks.0``, ``mid_block``), by layer index, with the renames of their
    children (None: the same child names)."""
    out, resnet = {}, i
    for j, layer in enumerate(block):
        if isinstance(layer, ResBlock):  # one per down/up block, two in the middle
            out[str(j)] = (f"{prefix}.resnets.{resnet}", _RESNET)
            resnet += 1
        elif isinstance(layer, SpatialTransformer):
            out[str(j)] = (f"{prefix}.attentions.{i}", None)
        elif isinstance(layer, Downsample):
            out[str(j)] = (f"{prefix}.downsamplers.0", {"op": "conv"})
        elif isinstance(layer, Upsample):
            out[str(j)] = (f"{prefix}.upsamplers.0", {"conv": "conv"})
    return out


def diffusers_unet_names(unet: UNetModel) -> dict[str, str]:
    """Our UNet's module paths -> the same modules' paths in diffusers' UNet2DConditionModel,
    for every module with a weight. Read from the blocks themselves: a Downsample or Upsample
    closes a level, the ResBlocks and transformers of a level count from 0."""
    blocks: dict[str, tuple[str, dict | None]] = {}
    for part, side in (("input_blocks", "down_blocks"), ("output_blocks", "up_blocks")):
        level, i = 0, 0
        for n, block in enumerate(getattr(unet, part)):
            if part == "input_blocks" and n == 0:
                continue  # conv_in
            for j, names in _layer_names(block, f"{side}.{level}", i).items():
                blocks[f"{part}.{n}.{j}"] = names
            if any(isinstance(layer, (Downsample, Upsample)) for layer in block):
                level, i = level + 1, 0
            else:
                i += 1
    if unet.middle_block is not None:  # KOALA-700M has none
        for j, names in _layer_names(unet.middle_block, "mid_block", 0).items():
            blocks[f"middle_block.{j}"] = names
    out = {}
    for path in _weight_modules(unet):
        if path in _UNET_TOP:
            out[path] = _UNET_TOP[path]
            continue
        parts = path.split(".")
        cut = 2 if parts[0] == "middle_block" else 3
        head, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
        if head not in blocks:
            continue
        prefix, renames = blocks[head]
        child = rest if renames is None else renames.get(rest)
        if child is not None:
            out[path] = f"{prefix}.{child}"
    return out


def _processor_name(diffusers_path: str) -> str | None:
    """Older diffusers attention-processor LoRAs name ``attn1.processor.to_q`` and ``...to_out``."""
    head, _, leaf = diffusers_path.rpartition(".")
    if leaf in ("to_q", "to_k", "to_v"):
        return f"{head}.processor.{leaf}"
    if diffusers_path.endswith(".to_out.0"):
        return diffusers_path[: -len(".to_out.0")] + ".processor.to_out"
    return None


def _add(names: dict, alias: str, target) -> None:
    if names.setdefault(alias, target) != target:  # our tables would be wrong, not the file
        raise RuntimeError(f"LoRA name {alias!r} maps to both {names[alias]} and {target}")


def unet_lora_names(unet: UNetModel) -> dict[str, str]:
    """Every LoRA module name that addresses a module of ``unet`` -> our module path."""
    diffusers = diffusers_unet_names(unet)
    names: dict[str, str] = {}
    for path in _weight_modules(unet):
        aliases = ["lora_unet_" + path.replace(".", "_"), "model.diffusion_model." + path, "diffusion_model." + path]
        if path in diffusers:
            d = diffusers[path]
            aliases += ["lora_unet_" + d.replace(".", "_"), "unet." + d, d]
            proc = _processor_name(d)
            if proc is not None:
                aliases += ["unet." + proc, proc]
        for alias in aliases:
            _add(names, alias, path)
    return names


def _openclip_name(path: str) -> str | None:
    """Our text-encoder module path -> its OpenCLIP name, where OpenCLIP has the same module
    (not the fused q/k/v in_proj, nor the transposed text_projection)."""
    if path == "transformer.embeddings.token_embedding":
        return "token_embedding"
    if path == "transformer.final_layer_norm":
        return "ln_final"
    if path.startswith("transformer.encoder.layers."):
        idx, sub = path[len("transformer.encoder.layers."):].split(".", 1)
        if sub in _TO_OPENCLIP:
            return f"transformer.resblocks.{idx}.{_TO_OPENCLIP[sub]}"
    return None


def text_lora_names(encoder: nn.Module, slot: TextSlot, position: int) -> dict[str, str]:
    """Every LoRA module name that addresses a module of one text encoder -> our module path.
    ``position`` is the encoder's place in its family (0 first, 1 SDXL's bigG)."""
    kohya, diffusers = _TEXT_PREFIXES[position]
    names: dict[str, str] = {}
    for path in _weight_modules(encoder):
        # transformers' CLIPTextModel path: our "transformer." is its "text_model."
        hf = "text_model." + path[len("transformer."):] if path.startswith("transformer.") else path
        aliases = [p + hf.replace(".", "_") for p in kohya] + [p + hf for p in diffusers]
        own = hf if slot.layout == "hf" else _openclip_name(path)
        if own is not None:
            aliases.append(slot.prefix + own)
        # ComfyUI's generic name (what its LoraSave writes): its CLIP key under text_encoders.
        aliases.append(f"text_encoders.clip_{slot.name}.transformer.{hf}")
        for alias in aliases:
            _add(names, alias, path)
    return names


# -- matching a LoRA file to a model ----------------------------------------------------------
_SUFFIXES = (  # no suffix here is the end of another, so the first match is the only one
    (".lora_up.weight", "up"), (".lora_down.weight", "down"), (".lora_mid.weight", "mid"),
    (".lora_B.weight", "up"), (".lora_A.weight", "down"),
    (".lora.up.weight", "up"), (".lora.down.weight", "down"),
    ("_lora.up.weight", "up"), ("_lora.down.weight", "down"),
    (".lora_linear_layer.up.weight", "up"), (".lora_linear_layer.down.weight", "down"),
    (".alpha", "alpha"), (".diff", "diff"), (".diff_b", "diff_b"), (".dora_scale", "dora_scale"),
    (".w_norm", "w_norm"), (".b_norm", "b_norm"), *ADAPTER_SUFFIXES,
)


@dataclass
class LoraMatch:
    """What a LoRA file does to a model: patches keyed by parameter name, and every key that
    is not applied with (why, module name, suffix)."""

    unet: dict[str, Patch]
    text: dict[str, dict[str, Patch]]
    skipped: dict[str, tuple[str, str, str]]
    harmless: set[str]  # skipped keys that change nothing: an alpha alone, parts not being patched
    modules: dict[str, str]  # module name -> adapter kind, for describing the file's format

    def skip(self, key: str, module: str, reason: str, harmless: bool = False) -> None:
        self.skipped[key] = (reason, module, key[len(module):] or key)
        if harmless:
            self.harmless.add(key)

    def skip_unknown(self, keys: list[str]) -> None:
        """Keys with no suffix we apply: an adapter kind not implemented, or nothing known."""
        for key in keys:
            kind = unsupported_kind(key)
            module = kind[1] if kind else key.rsplit(".", 1)[0]
            # an unknown key counts alone: its module may also hold a pair that is applied
            self.modules.setdefault(module if kind else key, kind[0] if kind else "unknown keys")
            self.skip(key, module, kind[2] if kind else "a key of no kind latentgraph knows")

    def skip_unnamed(self, name: str, roles: dict[str, str], part_absent: bool, label: str) -> None:
        """A module name that addresses nothing given: harmless for a part not being patched."""
        for key in roles.values():
            if part_absent:
                self.skip(key, name, "for a part not being patched", True)
            elif set(roles) == {"alpha"}:
                self.skip(key, name, "an alpha with no low-rank pair to scale", True)
            else:
                self.skip(key, name, f"names no module of this {label} model")


def _group(lora_sd: dict[str, torch.Tensor]) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Keys by module name and role ({"lora_unet_x": {"up": key, "down": key}}), and the keys
    with no suffix we know."""
    groups: dict[str, dict[str, str]] = {}
    unknown = []
    for key in lora_sd:
        for suffix, role in _SUFFIXES:
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[role] = key
                break
        else:
            unknown.append(key)
    return groups, unknown


def _alpha(roles: dict[str, str], sd: dict) -> float | None:
    if "alpha" not in roles:
        return None
    value = sd[roles["alpha"]]
    if value.numel() != 1:
        raise ValueError(f"{roles['alpha']} holds {value.numel()} values, expected one")
    return float(value)


def _weight_sources(roles: dict[str, str]) -> list[str]:
    """The kinds of weight delta a module's keys hold ("pair", "LoHa", "diff", ...)."""
    kinds = {ADAPTER_KIND[r] for r in roles if r in ADAPTER_KIND and r != "rescale"}
    if "rescale" in roles and not kinds:
        kinds.add("OFT")  # a rescale alone is an incomplete (B)OFT
    pair = ["pair"] if {"up", "down"} <= set(roles) else []
    return pair + sorted(kinds) + [r for r in ("diff", "w_norm") if r in roles]


def _build(roles: dict[str, str], sd: dict) -> tuple[dict[str, tuple[Patch, str]], dict[str, str]]:
    """One module's patches ({"weight": (patch, its keys), "bias": ...}) and the roles left
    unused, with why. Raises ValueError, naming the keys, when the parts contradict each other."""
    sources = _weight_sources(roles)
    if len(sources) > 1:
        raise ValueError(f"{', '.join(sorted(roles.values()))}: more than one delta for the same weight")
    patches: dict[str, tuple[Patch, str]] = {}
    used = set()
    alpha = _alpha(roles, sd) if sources and sources[0] not in ("diff", "w_norm") else None
    dora = sd[roles["dora_scale"]] if "dora_scale" in roles else None
    if sources == ["pair"]:
        up, down = roles["up"], roles["down"]
        mid = sd[roles["mid"]] if "mid" in roles else None
        try:
            patch = LowRank(sd[up], sd[down], mid, alpha, dora)
        except ValueError as exc:
            raise ValueError(f"{up} and {down}: {exc}") from None
        dora_keys = f" with {roles['dora_scale']} {tuple(dora.shape)}" if dora is not None else ""
        patches["weight"] = (patch, f"{up} {tuple(sd[up].shape)} x {down} {tuple(sd[down].shape)}{dora_keys}")
        used |= {"up", "down", "alpha", "mid", "dora_scale"}
    elif sources and sources[0] in ("diff", "w_norm"):
        key = roles[sources[0]]
        patches["weight"] = (Diff(sd[key]), f"{key} {tuple(sd[key].shape)}")
        used.add(sources[0])
    elif sources:
        try:
            adapter, adapter_roles = build_adapter(sources[0], roles, sd, alpha, dora)
        except IncompleteAdapter as exc:  # reported with the keys, as an incomplete pair is
            return {}, {role: str(exc) for role in roles}
        patches["weight"] = (adapter, adapter.keys)
        used |= adapter_roles
    for role in ("diff_b", "b_norm"):
        if role in roles:
            if "bias" in patches:
                raise ValueError(f"{roles['diff_b']} and {roles['b_norm']}: two deltas for the same bias")
            patches["bias"] = (Diff(sd[roles[role]]), f"{roles[role]} {tuple(sd[roles[role]].shape)}")
            used.add(role)
    return patches, {role: _why_unused(role) for role in roles if role not in used}


def module_patches(lora_sd: dict[str, torch.Tensor], modules) -> tuple[dict[str, dict[str, Patch]], set[str]]:
    """The patches ({"weight": ..., "bias": ...}) of each LoRA module name in ``modules`` that
    ``lora_sd`` has, and the keys they used (ComfyUI's comfy.lora.load_lora, by module name)."""
    groups, _ = _group(lora_sd)
    found, used = {}, set()
    for name in modules:
        if name in groups:
            try:
                built, unused = _build(groups[name], lora_sd)
            except ValueError as exc:
                raise LoraError(str(exc)) from None
            found[name] = {kind: patch for kind, (patch, _) in built.items()}
            used |= {key for role, key in groups[name].items() if role not in unused}
    return {n: p for n, p in found.items() if p}, used


def _why_unused(role: str) -> str:
    """Why a role of a module's keys was not applied."""
    if role == "alpha":
        return "an alpha with no low-rank pair to scale"
    if role == "dora_scale":
        return "a DoRA magnitude (dora_scale) with no adapter to scale"
    if role == "rescale":
        return "an OFT rescale (ComfyUI 0.3.64 does not apply it to OFT either)"
    if role in ("up", "down", "mid"):
        return "an incomplete low-rank pair (lora_up, lora_down: one is missing)"
    return "an unused part"


def _kind(roles: dict[str, str], sd: dict) -> str | None:
    """The adapter kind of one module's keys, for the format line ("LoHa", "DoRA", "BOFT")."""
    sources = _weight_sources(roles)
    if not sources:
        kinds = [ROLE_KIND[r] for r in roles if r in ROLE_KIND]
        return "DoRA" if "DoRA" in kinds else (kinds[0] if kinds else None)
    kind = {"pair": "LoCon (Tucker mid)" if "mid" in roles else "LoRA", "diff": "full diff",
            "w_norm": "norm weights"}.get(sources[0], sources[0])
    if kind == "OFT" and "oft_blocks" in roles and sd[roles["oft_blocks"]].dim() == 4:
        kind = "BOFT"
    if "dora_scale" in roles:
        return "DoRA" if sources[0] == "pair" else f"{kind} with DoRA"
    return kind


def _names(family: str, unet: nn.Module | None, text_encoders: dict[str, nn.Module]) -> dict[str, tuple[str, str]]:
    """LoRA module name -> (part, our module path) for the parts given."""
    names: dict[str, tuple[str, str]] = {}
    if unet is not None:
        names.update((alias, ("unet", path)) for alias, path in unet_lora_names(unet).items())
    for position, slot in enumerate(FAMILIES[family].text):
        if slot.name in text_encoders:
            found = text_lora_names(text_encoders[slot.name], slot, position)
            names.update((alias, (slot.name, path)) for alias, path in found.items())
    return names


def match_lora(lora_sd: dict[str, torch.Tensor], family: str, unet: nn.Module | None,
               text_encoders: dict[str, nn.Module], source: str = "LoRA") -> LoraMatch:
    """Match a LoRA state dict to a family's UNet and text encoders (either may be absent: their
    keys are then skipped as harmless). Raises LoraError listing every misfit at once, naming keys."""
    if family not in FAMILIES:
        raise LoraError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    label = FAMILIES[family].label
    names = _names(family, unet, text_encoders)
    modules = {"unet": unet, **text_encoders}
    params = {part: dict(m.named_parameters()) for part, m in modules.items() if m is not None}
    out = LoraMatch({}, {part: {} for part in text_encoders}, {}, set(), {})
    claimed: dict[tuple[str, str], str] = {}  # (part, parameter) -> the keys that patch it
    groups, unknown = _group(lora_sd)
    problems = []
    out.skip_unknown(unknown)
    for name, roles in groups.items():
        kind = _kind(roles, lora_sd)
        if kind and out.modules.get(name, "unknown keys") == "unknown keys":  # DoRA's PEFT magnitude stays DoRA
            out.modules[name] = kind
        if name not in names:
            part_absent = (not text_encoders) if name.startswith(TEXT_NAME_PREFIXES) else unet is None
            out.skip_unnamed(name, roles, part_absent, label)
            continue
        part, path = names[name]
        try:
            built, unused = _build(roles, lora_sd)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        for role, why in unused.items():
            # an alpha scales only what it comes with: with nothing applied it changes nothing
            out.skip(roles[role], name, why, harmless=(role == "alpha" and why == _why_unused("alpha")))
        for kind, (patch, keys) in built.items():
            param = f"{path}.{kind}"
            if param not in params[part]:  # only a bias can be missing: names come from weights
                for role in ("diff_b", "b_norm"):
                    if role in roles:
                        out.skip(roles[role], name, "a bias delta for a module without a bias")
                continue
            shape = params[part][param].shape
            if not patch.fits(shape):
                problems.append(f"{keys}: does not fit {part} {param} of shape {tuple(shape)}")
            elif (part, param) in claimed:
                problems.append(f"{keys} and {claimed[part, param]} both patch {part} {param}")
            else:
                claimed[part, param] = keys
                (out.unet if part == "unet" else out.text[part])[param] = patch
    if problems:
        raise LoraError(f"{source} does not fit this {label} model (a LoRA for another model?):\n  "
                        + "\n  ".join(problems))
    return out


def lora_patches(lora_sd: dict[str, torch.Tensor], family: str, unet: nn.Module | None,
                 text_encoders: dict[str, nn.Module], source: str = "LoRA"
                 ) -> tuple[dict[str, Patch], dict[str, dict[str, Patch]], list[str]]:
    """(UNet patches, {encoder name: patches}, every LoRA key not applied) of match_lora."""
    m = match_lora(lora_sd, family, unet, text_encoders, source)
    return m.unet, m.text, sorted(m.skipped)


def unapplied_report(m: LoraMatch, source: str, total: int, label: str) -> str | None:
    """The warning for keys that would change the picture but are not applied (grouped), or
    None. Raises LoraError when no key of the file applies at all: that file is for another
    model, or of a kind latentgraph does not know, and a picture without it would be wrong."""
    fatal = {k: v for k, v in m.skipped.items() if k not in m.harmless}
    if not fatal:
        return None
    fmt = describe_format(m.modules)
    if not m.unet and not any(m.text.values()):
        raise LoraError(f"{source}: none of its {total} keys can be applied to this {label} model (format "
                        f"detected: {fmt}). Keys not applied, grouped:\n{group_report(fatal)}")
    return (f"{len(fatal)} of the {total} keys of {source} were not applied (format detected: {fmt}); the "
            f"rest of it is. Keys not applied, grouped:\n{group_report(fatal)}")


# -- applying -------------------------------------------------------------------------------
def _twin(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    """A copy of a module tree: new module objects and containers, the same tensors."""
    if id(module) in memo:
        return memo[id(module)]
    twin = module.__class__.__new__(module.__class__)
    memo[id(module)] = twin
    # containers (parameters, buffers, hooks) are copied so the twin can change without the base
    twin.__dict__.update({k: v.copy() if isinstance(v, (dict, set)) else v for k, v in module.__dict__.items()})
    twin.__dict__["_modules"] = {k: None if m is None else _twin(m, memo) for k, m in module._modules.items()}
    return twin


@torch.no_grad()
def apply_lora(module: nn.Module, patches: dict[str, Patch], strength: float = 1.0) -> nn.Module:
    """A new module with ``W + strength * delta`` (float32, cast back to W's dtype) for each
    patched parameter; every other parameter and buffer is the base's own tensor. The base is
    not changed. LoRAs stack by applying again to the result; strength 0 patches nothing."""
    params = dict(module.named_parameters())
    missing = [name for name in patches if name not in params]
    if missing:
        raise LoraError(f"patches for parameters the {type(module).__name__} does not have: {', '.join(missing)}")
    twin = _twin(module, {})
    if strength == 0:
        return twin
    for name, patch in patches.items():
        base = params[name]
        weight = patch.apply(base.float(), strength)
        owner, _, attr = name.rpartition(".")
        layer = twin.get_submodule(owner)  # a layer held in an fp16 file's dtype stores it in its compute dtype
        setattr(layer, attr, nn.Parameter(weight.to(patched_dtype(layer, base)), requires_grad=base.requires_grad))
    return twin


@dataclass
class LoadedLora:
    """What load_lora made: the patched modules, the keys skipped as harmless, and the warning
    (keys that matter but were not applied, grouped) or None."""

    unet: nn.Module | None
    text: dict[str, nn.Module]
    harmless: list[str]
    warning: str | None


def load_lora(path: str | Path, family: str, unet: nn.Module | None, text_encoders: dict[str, nn.Module],
              strength_model: float = 1.0, strength_clip: float = 1.0, source: str | None = None) -> LoadedLora:
    """Read a LoRA file and patch copies of the given modules (which are left as they are).
    Raises LoraError if a tensor does not fit its weight or no key applies; keys that name
    nothing here, or are of a kind not applied, come back as the warning. Passing no text
    encoders (a model-only load) skips the text-encoder keys, as passing no UNet skips the
    UNet's. ``source`` names the file in messages (default: the path)."""
    source = source or str(path)
    lora_sd = read_lora(path)
    m = match_lora(lora_sd, family, unet, text_encoders, source)
    warning = unapplied_report(m, source, len(lora_sd), FAMILIES[family].label)
    new_unet = apply_lora(unet, m.unet, strength_model) if unet is not None else None
    new_text = {name: apply_lora(enc, m.text[name], strength_clip) for name, enc in text_encoders.items()}
    return LoadedLora(new_unet, new_text, sorted(m.harmless), warning)


def load_lora_into(path: str | Path, family: str, unet: nn.Module | None, text_encoders: dict[str, nn.Module],
                   strength_model: float = 1.0, strength_clip: float = 1.0
                   ) -> tuple[nn.Module | None, dict[str, nn.Module], list[str]]:
    """load_lora as (patched UNet, {name: patched text encoder}, the keys skipped as harmless);
    its warning goes to the log (the nodes show it on the node instead)."""
    loaded = load_lora(path, family, unet, text_encoders, strength_model, strength_clip)
    if loaded.warning:
        log.warning("%s", loaded.warning)
    return loaded.unet, loaded.text, loaded.harmless
