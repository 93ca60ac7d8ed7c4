"""ComfyUI's core nodes that latentgraph lacks, each with the reason (`latentgraph nodes --missing`).

The core list is data (latentgraph/data/comfy_core_nodes.json: name, python_module and category
of every node a plain ComfyUI 0.3.64 server lists in /object_info); what we have is read from the
live registry, so the answer follows the nodes as they are added. Every missing node gets one of
three reasons, decided by these rules in this order:

1. ``api``: the module is under ``comfy_api_nodes`` (paid cloud services reached through Comfy's
   API; they need an account and a network, not a local model).
2. ``out of scope``: issue 16 covers Stable Diffusion (SD1.x, SD2.x, SDXL and derivatives); video,
   audio, 3D and the DiT families stay out. A node is out of scope when its module is one of
   OUT_OF_SCOPE_MODULES, or its name one of OUT_OF_SCOPE_NODES (the DiT entries of modules that
   also hold SD nodes), or a segment of its category is one of MEDIA_CATEGORY_PARTS.
3. ``to do``: anything else: a Stable Diffusion node we do not have yet.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Iterable

TODO = "to do"
OUT_OF_SCOPE = "out of scope"
API = "api"
REASONS = (TODO, OUT_OF_SCOPE, API)  # the order of the table and of the counts

API_PREFIX = "comfy_api_nodes."

# module -> what it is for; every node of these modules is out of scope
OUT_OF_SCOPE_MODULES = {
    "comfy_extras.nodes_video": "video", "comfy_extras.nodes_video_model": "video (Stable Video Diffusion)",
    "comfy_extras.nodes_wan": "video (WAN)", "comfy_extras.nodes_lt": "video (LTXV)",
    "comfy_extras.nodes_mochi": "video (Mochi)", "comfy_extras.nodes_cosmos": "video (Cosmos)",
    "comfy_extras.nodes_camera_trajectory": "video (WAN camera)", "comfy_extras.nodes_context_windows": "video",
    "comfy_extras.nodes_hunyuan": "DiT (HunyuanDiT, HunyuanVideo, HunyuanImage)",
    "comfy_extras.nodes_audio": "audio", "comfy_extras.nodes_ace": "audio (ACE-Step)",
    "comfy_extras.nodes_audio_encoder": "audio", "comfy_extras.nodes_hunyuan3d": "3D (Hunyuan3D)",
    "comfy_extras.nodes_load_3d": "3D", "comfy_extras.nodes_stable3d": "3D (Zero123, SV3D)",
    "comfy_extras.nodes_sd3": "DiT (SD3)", "comfy_extras.nodes_flux": "DiT (Flux)",
    "comfy_extras.nodes_lumina2": "DiT (Lumina 2)", "comfy_extras.nodes_hidream": "DiT (HiDream)",
    "comfy_extras.nodes_stable_cascade": "Stable Cascade", "comfy_extras.nodes_pixart": "DiT (PixArt)",
    "comfy_extras.nodes_qwen": "DiT (Qwen-Image)", "comfy_extras.nodes_chroma_radiance": "DiT (Chroma)",
    "comfy_extras.nodes_slg": "DiT (skip-layer guidance for DiT blocks)",
    "comfy_extras.nodes_edit_model": "DiT (Flux Kontext / Qwen edit reference latents)",
    "comfy_extras.nodes_model_patch": "DiT (Qwen-Image and Flux model patches)",
}

# DiT-family nodes in modules whose other nodes are Stable Diffusion ones
OUT_OF_SCOPE_NODES = {
    **{f"ModelMerge{n}": "DiT model merging" for n in (
        "SD3_2B", "Auraflow", "Flux1", "SD35_Large", "MochiPreview", "LTXV", "Cosmos7B", "Cosmos14B", "WAN2_1",
        "CosmosPredict2_2B", "CosmosPredict2_14B", "QwenImage")},
    **{f"ModelSampling{n}": "DiT model sampling" for n in ("StableCascade", "SD3", "AuraFlow", "Flux")},
    "T5TokenizerOptions": "DiT (T5 text encoders)",
    "ControlNetInpaintingAliMamaApply": "DiT (AliMama inpainting ControlNet for SD3/Flux)",
}

# category segment -> what it is for ("latent/video", "conditioning/3d_models", "audio", ...)
MEDIA_CATEGORY_PARTS = {"video": "video", "video_models": "video", "audio": "audio", "3d": "3D",
                        "3d_models": "3D"}


@dataclass(frozen=True)
class MissingNode:
    name: str
    module: str
    category: str
    reason: str  # one of REASONS
    why: str  # what the reason rests on: the family or medium, the service module, or ""


def core_nodes() -> dict:
    """The shipped list: {"source": provenance, "count": n, "nodes": [{name, module, category}]}."""
    text = resources.files("latentgraph").joinpath("data/comfy_core_nodes.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    if doc["count"] != len(doc["nodes"]):  # a hand edit that dropped or added rows without the count
        raise ValueError(f"comfy_core_nodes.json: count {doc['count']} but {len(doc['nodes'])} nodes")
    return doc


def classify(name: str, module: str, category: str) -> tuple[str, str]:
    """(reason, why) for a core node we lack, by the module's rules above."""
    if module.startswith(API_PREFIX):
        return API, "cloud service " + module[len(API_PREFIX):].removeprefix("nodes_")
    if module in OUT_OF_SCOPE_MODULES:
        return OUT_OF_SCOPE, OUT_OF_SCOPE_MODULES[module]
    if name in OUT_OF_SCOPE_NODES:
        return OUT_OF_SCOPE, OUT_OF_SCOPE_NODES[name]
    for part in category.split("/"):
        if part in MEDIA_CATEGORY_PARTS:
            return OUT_OF_SCOPE, MEDIA_CATEGORY_PARTS[part]
    return TODO, ""


def missing_nodes(have: Iterable[str], core: dict | None = None) -> list[MissingNode]:
    """The core nodes not in `have`, ordered by reason, module and name."""
    have = set(have)
    core = core if core is not None else core_nodes()
    out = [MissingNode(n["name"], n["module"], n["category"], *classify(n["name"], n["module"], n["category"]))
           for n in core["nodes"] if n["name"] not in have]
    return sorted(out, key=lambda m: (REASONS.index(m.reason), m.module, m.name))


def report(have: Iterable[str], core: dict | None = None) -> dict:
    """The `--missing --json` document: totals, counts per reason, and the missing nodes."""
    have = set(have)
    core = core if core is not None else core_nodes()
    missing = missing_nodes(have, core)
    counts = {reason: sum(m.reason == reason for m in missing) for reason in REASONS}
    return {"comfyui": core["source"]["comfyui_version"], "core": core["count"],
            "have": core["count"] - len(missing), "missing": counts, "nodes": [asdict(m) for m in missing]}


def format_report(doc: dict) -> str:
    """The plain-text table: one row per missing node, then the counts."""
    rows = [("name", "module", "reason")] + [
        (n["name"], n["module"], n["reason"] + (f": {n['why']}" if n["why"] else "")) for n in doc["nodes"]]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c}".rstrip() for a, b, c in rows]
    counts = ", ".join(f"{n} {reason}" for reason, n in doc["missing"].items())
    lines.append(f"ComfyUI {doc['comfyui']} core: {doc['core']} nodes; latentgraph has {doc['have']}; "
                 f"missing {doc['core'] - doc['have']}: {counts}")
    return "\n".join(lines) + "\n"
