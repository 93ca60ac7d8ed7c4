"""What a LoRA file is (its adapter kinds and naming style), and a short account of the keys
that are not applied, grouped, for the warning on the node (or the error when none applies).

Applied (lora.py, lora_algos.py): low-rank pairs in every naming (LoRA, LoCon with
``lora_mid``), LoHa, LoKr, GLoRA, OFT, BOFT, DoRA's ``dora_scale`` on any of them, full deltas
(``.diff``, ``.diff_b``, ``set_weight``) and LyCORIS' trained norms (``.w_norm``, ``.b_norm``).
Not applied, as in ComfyUI 0.3.64: the old OFT's ``oft_diag``, PEFT's DoRA magnitude
(``lora_magnitude_vector``), ``reshape_weight`` and bundled embeddings; their keys are
reported with the kind named.
"""

from __future__ import annotations

import re

from .lora_algos import ADAPTER_KIND

# suffix -> (adapter kind, why it is not applied)
_AS_COMFY = "not applied; ComfyUI 0.3.64 does not apply it either"
UNSUPPORTED_SUFFIXES = (
    (".lora_magnitude_vector.weight", "DoRA", "PEFT's DoRA magnitude (lora_magnitude_vector): " + _AS_COMFY),
    (".lora_magnitude_vector", "DoRA", "PEFT's DoRA magnitude (lora_magnitude_vector): " + _AS_COMFY),
    (".oft_diag", "OFT", "the old OFT layout (oft_diag): " + _AS_COMFY),
    (".reshape_weight", "reshape (reshape_weight)", "a weight reshape (reshape_weight): not applied"))
UNSUPPORTED_PREFIXES = (("bundle_emb.", "bundled textual-inversion embeddings",
                         "bundled textual-inversion embeddings: not applied (put them in models/embeddings)"),)
# applied roles (lora.py's _SUFFIXES) -> the kind they belong to, for the format line
ROLE_KIND = {"up": "LoRA", "down": "LoRA", "mid": "LoCon (Tucker mid)", "diff": "full diff", "diff_b": "full diff",
             "w_norm": "norm weights", "b_norm": "norm weights", "dora_scale": "DoRA", **ADAPTER_KIND}
# module-name prefixes that address a text encoder, in any naming
TEXT_NAME_PREFIXES = ("lora_te", "text_encoder", "cond_stage_model.", "conditioner.embedders.")
_KOHYA = ("lora_unet_", "lora_te")
_DIFFUSERS = ("unet.", "text_encoder", "down_blocks.", "up_blocks.", "mid_block.", "conv_in", "conv_out",
              "time_embedding.", "add_embedding.")
_LDM = ("model.diffusion_model.", "diffusion_model.", "cond_stage_model.", "conditioner.")


def unsupported_kind(key: str) -> tuple[str, str, str] | None:
    """(adapter kind, module name, why not applied) of a key of a kind latentgraph does not
    apply, else None."""
    for prefix, kind, why in UNSUPPORTED_PREFIXES:
        if key.startswith(prefix):
            return kind, prefix.rstrip("."), why
    for suffix, kind, why in UNSUPPORTED_SUFFIXES:
        if key.endswith(suffix):
            return kind, key[: -len(suffix)], why
    return None


def _naming(module: str) -> str:
    if module.startswith(_KOHYA):
        return "kohya"
    if module.startswith(_LDM):
        return "LDM"
    if module.startswith(_DIFFUSERS):
        return "diffusers/PEFT"
    return "unknown"


def describe_format(modules: dict[str, str]) -> str:
    """'LoHa on 96 modules, LoRA on 4 modules; kohya names' from {module name: kind}."""
    kinds: dict[str, int] = {}
    namings: dict[str, int] = {}
    for module, kind in modules.items():
        kinds[kind] = kinds.get(kind, 0) + 1
        naming = _naming(module)
        namings[naming] = namings.get(naming, 0) + 1
    ranked = sorted(kinds.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{kind} on {n} module{'s' if n != 1 else ''}" for kind, n in ranked) or "no tensors"
    names = " and ".join(n for n, _ in sorted(namings.items(), key=lambda kv: (-kv[1], kv[0])))
    return f"{text}; {names} names" if names else text


def name_prefix(module: str) -> str:
    """A module name cut before its first block number: ``lora_unet_input_blocks_1_1_proj_in`` ->
    ``lora_unet_input_blocks_*``, ``unet.down_blocks.0.attentions...`` -> ``unet.down_blocks.*``."""
    m = re.search(r"[._]\d+(?=[._]|$)", module)
    return module[: m.start() + 1] + "*" if m else module


def group_report(skipped: dict[str, tuple[str, str, str]], limit: int = 12) -> str:
    """Lines 'reason: prefix* (n modules, k keys: suffixes)' from {key: (reason, module, suffix)}."""
    groups: dict[tuple[str, str], tuple[set, int, set]] = {}
    for key, (reason, module, suffix) in skipped.items():
        modules, count, suffixes = groups.get((reason, name_prefix(module)), (set(), 0, set()))
        modules.add(module)
        suffixes.add(suffix)
        groups[reason, name_prefix(module)] = (modules, count + 1, suffixes)
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1][1], kv[0]))
    lines = []
    for (reason, prefix), (modules, count, suffixes) in ranked[:limit]:
        shown = ", ".join(sorted(suffixes)[:6]) + (", ..." if len(suffixes) > 6 else "")
        lines.append(f"  {reason}: {prefix} ({len(modules)} module{'s' if len(modules) != 1 else ''}, "
                     f"{count} key{'s' if count != 1 else ''}: {shown})")
    if len(ranked) > limit:
        rest = sum(v[1] for _, v in ranked[limit:])
        lines.append(f"  ... {len(ranked) - limit} more groups ({rest} keys)")
    return "\n".join(lines)
