"""Random-weight checkpoints in the original single-file layout (``latentgraph make-checkpoint``).

Weights come from each module's default initialisation under ``torch.manual_seed(seed)``;
the architecture goes into the safetensors metadata so the loader reads it back exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import build_text_encoders, original_layout, save_checkpoint
from .families import METADATA_KEY, Architecture, full_architecture, tiny_architecture
from .unet import UNetModel
from .vae import AutoencoderKL

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def random_networks(arch: Architecture, seed: int = 0) -> tuple:
    """(unet, vae, text encoders) with seeded default-initialised weights."""
    torch.manual_seed(seed)
    unet = UNetModel(arch.unet)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(arch.vae)
    torch.manual_seed(seed + 2)
    text = build_text_encoders(arch)
    return unet, vae, text



def _check_size_and_dtype(size: str, dtype: str) -> None:
    if size not in ("tiny", "full"):
        raise ValueError(f"size must be tiny or full, not {size!r}")
    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAVE_DTYPES)}, not {dtype!r}")


def _save(tensors: dict[str, torch.Tensor], out: str | Path, dtype: str, metadata: dict[str, str]) -> dict:
    """Every made file is written the same way: floating tensors cast to ``dtype`` (contiguous),
    ``format: pt`` plus ``metadata`` in the safetensors header. Returns the tensors written."""
    target = SAVE_DTYPES[dtype]
    with torch.no_grad():
        tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tensors, out, metadata={"format": "pt", **metadata})
    return tensors


def make_checkpoint(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                    prediction: str | None = None, write_metadata: bool = True,
                    variant: str | None = None) -> Architecture:
    """Write a random checkpoint of ``family`` at ``size`` ("tiny" or "full") to ``out``;
    ``variant``: a derivative (models/variants.py VARIANTS: SSD-1B, KOALA, Playground v2.5, ...)."""
    from .variants import variant_architecture, variant_marker_tensors

    _check_size_and_dtype(size, dtype)
    if variant is not None:
        arch = variant_architecture(family, variant, size)
    else:
        arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    if prediction is not None:
        arch.prediction = prediction
    with torch.no_grad():
        unet, vae, text = random_networks(arch, seed)
        tensors = original_layout(arch, unet, vae, text)
        tensors.update(variant_marker_tensors(variant) if variant is not None else {})
        del unet, vae, text
    _save(tensors, out, dtype, {METADATA_KEY: arch.to_json()} if write_metadata else {})
    return arch


def make_controlnet(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                    write_metadata: bool = True) -> "ControlNetConfig":
    """Write a random ControlNet for ``family``'s UNet at ``size`` in the LDM layout
    (``control_model.*``, as the lllyasviel files). Every weight, the zero convs too, is
    default-initialised under ``torch.manual_seed(seed)``, so its control visibly changes a
    picture (a trained ControlNet starts from zero convs; a random one at zero would test nothing)."""
    from .controlnet import ControlNet, ControlNetConfig, METADATA_KEY as CN_KEY, controlnet_tensors

    _check_size_and_dtype(size, dtype)
    if family not in ("sd15", "sd2", "sdxl"):
        raise ValueError(f"ControlNets are made for sd15, sd2 or sdxl, not {family!r}")
    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    config = ControlNetConfig(arch.unet, 3, family)
    with torch.no_grad():
        torch.manual_seed(seed)
        tensors = controlnet_tensors(ControlNet(config))
    _save(tensors, out, dtype, {CN_KEY: config.to_json()} if write_metadata else {})
    return config


def make_gligen(out: str | Path, family: str = "sd15", size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                write_metadata: bool = True) -> dict[str, torch.Tensor]:
    """Write a random GLIGEN textbox file for ``family``'s UNet at ``size`` in the published
    layout (``position_net.*``, a ``*.fuser.*`` per transformer block). The gates (zero in a
    fresh GLIGEN, which would leave every picture unchanged) are drawn in [0.3, 1)."""
    from .gligen import GLIGEN, METADATA_KEY as GLIGEN_KEY
    from .unet import BasicTransformerBlock

    _check_size_and_dtype(size, dtype)
    if family != "sd15":
        raise ValueError(f"GLIGEN files are made for sd15 (the published ones are SD1.x), not {family!r}")
    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    key_dim = arch.unet.context_dim
    with torch.device("meta"):
        blocks = [(name, m.norm1.normalized_shape[0]) for name, m in UNetModel(arch.unet).named_modules()
                  if isinstance(m, BasicTransformerBlock)]
    # a skeleton with the fusers' shapes, so the GLIGEN class itself lays the modules out
    skeleton = {f"{name}.fuser.linear.weight": torch.empty(dim, key_dim) for name, dim in blocks}
    skeleton["position_net.null_positive_feature"] = torch.empty(key_dim)
    skeleton["position_net.linears.4.weight"] = torch.empty(key_dim, 1)
    with torch.no_grad():
        torch.manual_seed(seed)
        model = GLIGEN(skeleton, heads=8)
        for p in (model.position_net.null_positive_feature, model.position_net.null_position_feature):
            p.normal_()
        for fuser in model.fusers:
            fuser.alpha_attn.uniform_(0.3, 1.0)
            fuser.alpha_dense.uniform_(0.3, 1.0)
        tensors = {k: v.detach() for k, v in model.state_dict().items()}
    return _save(tensors, out, dtype, {GLIGEN_KEY: json.dumps({"heads": 8})} if write_metadata else {})


T2I_VARIANTS = ("full", "light", "xl")


def make_t2i_adapter(out: str | Path, variant: str, size: str = "tiny", seed: int = 0,
                     dtype: str = "fp32", hint_channels: int = 3) -> "AdapterConfig":
    """Write a random T2I-Adapter (TencentARC layout: ``conv_in``/``body.*``) of ``variant``
    (full, light: SD1/SD2; xl: SDXL) at ``size``: RGB hints (or grey: ``hint_channels`` 1),
    levels of c, 2c, 4c, 4c channels (c = 320 at full size, 32 tiny), as the published files.
    Weights are torch's default init under ``torch.manual_seed(seed)``."""
    from .t2i_adapter import AdapterConfig, T2IAdapter, adapter_tensors

    if variant not in T2I_VARIANTS:
        raise ValueError(f"T2I-Adapter variant must be full, light or xl, not {variant!r}")
    _check_size_and_dtype(size, dtype)
    c = 32 if size == "tiny" else 320
    unshuffle = 16 if variant == "xl" else 8
    if hint_channels not in (1, 3):
        raise ValueError(f"T2I-Adapter hints have 1 or 3 channels, not {hint_channels}")
    config = AdapterConfig(variant, hint_channels * unshuffle * unshuffle, (c, 2 * c, 4 * c, 4 * c),
                           nums_rb=4 if variant == "light" else 2)
    with torch.no_grad():
        torch.manual_seed(seed)
        tensors = adapter_tensors(T2IAdapter(config))
    _save(tensors, out, dtype, {})
    return config


def make_control_lora_file(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                           rank: int = 4) -> dict[str, torch.Tensor]:
    """Write a random control-LoRA (Stability's ``lora_controlnet`` layout) for ``family``'s UNet
    at ``size``: rank-``rank`` up/down pairs for the encoder's big layers, the ControlNet-only
    layers and biases in full. Only the UNet's shapes are needed, so it is built on the meta device."""
    from .control_lora import make_control_lora

    _check_size_and_dtype(size, dtype)
    if family not in ("sd15", "sd2", "sdxl"):
        raise ValueError(f"control-LoRAs are made for sd15, sd2 or sdxl, not {family!r}")
    if not 1 <= rank <= 1024:
        raise ValueError(f"a control-LoRA's rank must be 1 to 1024, not {rank}")
    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    with torch.device("meta"):
        unet = UNetModel(arch.unet)
    with torch.no_grad():
        tensors = make_control_lora(unet, rank=rank, seed=seed)
    return _save(tensors, out, dtype, {})


UNCLIP_FAMILIES = ("sd21_unclip_l", "sd21_unclip_h")


def unclip_tensors(arch: Architecture, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """An SD2.1-unCLIP checkpoint's tensors in the published layout and their metadata: the SD2
    networks (as make_checkpoint), the noise augmentor's schedule (``noise_augmentor.*``) and a
    random CLIP image encoder in the OpenCLIP layout under ``embedder.model.visual.`` (seed + 3):
    ViT-L/14 (L) or ViT-H/14 (H) at full size, a 2-layer 32-wide one for a tiny architecture.
    Build it under ``torch.device("meta")`` to list the keys without allocating."""
    from dataclasses import replace

    from .clip_vision import METADATA_KEY as VISION_KEY, ClipVision, ClipVisionConfig, hf_to_openai
    from .unclip import schedule_buffers

    if arch.family not in UNCLIP_FAMILIES:
        raise ValueError(f"unCLIP checkpoints are {' or '.join(UNCLIP_FAMILIES)}, not {arch.family!r}")
    dim = arch.unclip_dim
    if dim == arch.spec.unclip_dim:  # the published sizes
        vision = ClipVisionConfig.vit_l() if arch.family == "sd21_unclip_l" else ClipVisionConfig.vit_h()
    else:
        vision = replace(ClipVisionConfig(32, 64, 2, 2, act="gelu"), projection_dim=dim)
    with torch.no_grad():
        unet, vae, text = random_networks(arch, seed)
        tensors = original_layout(arch, unet, vae, text)
        del unet, vae, text
        torch.manual_seed(seed + 3)
        encoder = ClipVision(vision)
        tensors.update(hf_to_openai(encoder.model.state_dict(), "embedder.model.visual."))
    tensors.update({"noise_augmentor." + k: v for k, v in schedule_buffers().items()})
    return tensors, {METADATA_KEY: arch.to_json(), VISION_KEY: json.dumps(vision.to_dict(), sort_keys=True)}


def make_unclip_checkpoint(out: str | Path, family: str, size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                           prediction: str | None = None, write_metadata: bool = True) -> Architecture:
    """Write a random SD2.1-unCLIP checkpoint (``family`` sd21_unclip_l or sd21_unclip_h) at ``size``."""
    _check_size_and_dtype(size, dtype)
    if family not in UNCLIP_FAMILIES:
        raise ValueError(f"unCLIP checkpoints are {' or '.join(UNCLIP_FAMILIES)}, not {family!r}")
    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    if prediction is not None:
        arch.prediction = prediction
    tensors, metadata = unclip_tensors(arch, seed)
    _save(tensors, out, dtype, metadata if write_metadata else {})
    return arch


def make_clip_vision(out: str | Path, variant: str = "vit-l", size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                     layout: str = "hf", write_metadata: bool = True) -> "ClipVisionConfig":
    """Write a random CLIP vision tower: ``variant`` vit-l (OpenAI ViT-L/14), vit-h (OpenCLIP
    ViT-H/14) or vit-bigg (OpenCLIP ViT-bigG/14) at full size, or a tiny one with the variant's
    activation; ``layout`` hf (vision_model.*) or openclip (visual.*). The metadata holds the
    config (heads and activation, which shapes cannot show)."""
    from .clip_vision import METADATA_KEY as VISION_KEY, VARIANTS, clip_vision_tensors, random_clip_vision, tiny_config

    _check_size_and_dtype(size, dtype)
    config = tiny_config(variant) if size == "tiny" else VARIANTS[variant]() if variant in VARIANTS else None
    if config is None:
        raise ValueError(f"CLIP vision variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    with torch.no_grad():
        tensors = clip_vision_tensors(random_clip_vision(config, seed), layout)
    _save(tensors, out, dtype, {VISION_KEY: json.dumps(config.to_dict(), sort_keys=True)} if write_metadata else {})
    return config


def make_style_model(out: str | Path, family: str = "sd15", size: str = "tiny", seed: int = 0, dtype: str = "fp32",
                     write_metadata: bool = True) -> "StyleAdapterConfig":
    """Write a random T2I style adapter for ``family`` (sd15: the published one is SD1.x) in the
    published layout: full size reads ViT-L/14 (1024 wide) into 8 tokens of 768; tiny reads the
    tiny CLIP vision (64 wide) into 8 tokens of the tiny SD1 context (32)."""
    from .style_model import METADATA_KEY as STYLE_KEY, TINY, StyleAdapterConfig, random_style_adapter, style_tensors

    _check_size_and_dtype(size, dtype)
    if family != "sd15":
        raise ValueError(f"style models are made for sd15 (the published one is SD1.x), not {family!r}")
    config = TINY if size == "tiny" else StyleAdapterConfig()
    with torch.no_grad():
        tensors = style_tensors(random_style_adapter(config, seed))
    _save(tensors, out, dtype, {STYLE_KEY: json.dumps(config.to_dict(), sort_keys=True)} if write_metadata else {})
    return config
