"""Model families (SD1.x, SD2.x, SD2.1-unCLIP L and H, SDXL base and refiner): where their parts live in a
single-file checkpoint, their latent scale, how their text encoders are read, and the
architecture record written into checkpoints' safetensors metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import torch

from .text_encoders import EncoderRole, TextEncoderConfig
from .unet import UNetConfig, timestep_embedding
from .vae import VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
METADATA_KEY = "latentgraph.architecture"


@dataclass(frozen=True)
class TextSlot:
    """One text encoder of a family: its name, key prefix, key layout and reading."""

    name: str  # "l", "h" or "g"
    prefix: str  # where its tensors live in the checkpoint
    layout: str  # "hf" (transformers names) or "openclip"
    role: EncoderRole
    act: str  # activation of the transformer MLP


@dataclass(frozen=True)
class Family:
    name: str  # "sd15", "sd2", "sdxl", "sdxl_refiner"
    label: str  # for messages
    latent_scale: float  # LATENT values are unscaled VAE space; the sampler multiplies by this
    text: tuple[TextSlot, ...]
    context_dims: tuple[int, ...]  # UNet context width of the full-size model(s)
    linear_proj: bool  # the UNet's transformers have Linear proj_in/proj_out (1x1 convs if False)
    # the UNet's vector input y: None for no label_emb, else how many 256-wide size embeddings
    # follow the pooled text of the last text encoder (SDXL 6, refiner 5)
    adm_sizes: int | None
    # unCLIP: the width D of the CLIP image embeddings at full size (y is D noised values and the
    # D-wide embedding of their noise level, models/unclip.py); None for the text-only families
    unclip_dim: int | None = None


_L_SD1 = TextSlot("l", "cond_stage_model.transformer.", "hf", EncoderRole.sd1(), "quick_gelu")
_H_SD2 = TextSlot("h", "cond_stage_model.model.", "openclip", EncoderRole.sd2(), "gelu")
_L_XL = TextSlot("l", "conditioner.embedders.0.transformer.", "hf", EncoderRole.sdxl_l(), "quick_gelu")
_G_XL = TextSlot("g", "conditioner.embedders.1.model.", "openclip", EncoderRole.sdxl_g(), "gelu")
_G_REFINER = TextSlot("g", "conditioner.embedders.0.model.", "openclip", EncoderRole.sdxl_g(), "gelu")

# Names in this registry may be added, never changed or removed.
FAMILIES: dict[str, Family] = {
    "sd15": Family("sd15", "Stable Diffusion 1.x", 0.18215, (_L_SD1,), (768,), False, None),
    "sd2": Family("sd2", "Stable Diffusion 2.x", 0.18215, (_H_SD2,), (1024,), True, None),
    "sdxl": Family("sdxl", "Stable Diffusion XL", 0.13025, (_L_XL, _G_XL), (2048,), True, 6),
    "sdxl_refiner": Family("sdxl_refiner", "Stable Diffusion XL refiner", 0.13025, (_G_REFINER,), (1280,), True, 5),
    "sd21_unclip_l": Family("sd21_unclip_l", "Stable Diffusion 2.1 unCLIP-L", 0.18215, (_H_SD2,), (1024,), True, None,
                            768),
    "sd21_unclip_h": Family("sd21_unclip_h", "Stable Diffusion 2.1 unCLIP-H", 0.18215, (_H_SD2,), (1024,), True, None,
                            1024),
}
# tiny unCLIP image-embedding widths (make-checkpoint --size tiny)
TINY_UNCLIP_DIMS = {"sd21_unclip_l": 32, "sd21_unclip_h": 48}


@dataclass
class Architecture:
    """Everything needed to build a checkpoint's networks."""

    family: str
    unet: UNetConfig
    vae: VAEConfig
    text: dict[str, TextEncoderConfig] = field(default_factory=dict)
    prediction: str = "eps"  # "eps" or "v"; "edm" (EDM's preconditioning, Playground v2.5) needs sigma_range
    zsnr: bool = False  # trained with zero terminal SNR (SDXL `ztsnr` marker)
    # (sigma_min, sigma_max) of a model trained on continuous noise levels (EDM sigmas: Playground
    # v2.5, CosXL), None for SD's 1000 discrete timesteps; read from marker tensors on load
    sigma_range: tuple | None = None
    latent_format: str | None = None  # "playground_v25": its own latent mean/std; None: the family's scale

    @property
    def spec(self) -> Family:
        return FAMILIES[self.family]

    @property
    def unclip_dim(self) -> int | None:
        """The CLIP image-embedding width an unCLIP UNet takes (half its label_emb), else None."""
        if self.spec.unclip_dim is None or self.unet.adm_in_channels is None:
            return None
        return self.unet.adm_in_channels // 2

    @property
    def inpaint(self) -> bool:
        return self.unet.in_channels == 9

    def to_json(self) -> str:
        extra = {"sigma_range": list(self.sigma_range)} if self.sigma_range is not None else {}
        extra.update({"latent_format": self.latent_format} if self.latent_format is not None else {})
        return json.dumps({"family": self.family, "prediction": self.prediction, "zsnr": self.zsnr,
                           "unet": self.unet.to_dict(), "vae": self.vae.to_dict(), **extra,
                           "text": {k: v.to_dict() for k, v in self.text.items()}}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Architecture":
        d = json.loads(text)
        if d.get("family") not in FAMILIES:
            raise ValueError(f"unknown family {d.get('family')!r}")
        return cls(d["family"], UNetConfig.from_dict(d["unet"]), VAEConfig.from_dict(d["vae"]),
                   {k: TextEncoderConfig.from_dict(v) for k, v in d.get("text", {}).items()},
                   d.get("prediction", "eps"), bool(d.get("zsnr", False)),
                   tuple(d["sigma_range"]) if d.get("sigma_range") is not None else None, d.get("latent_format"))


def full_architecture(family: str) -> Architecture:
    """The published architecture of a family at full size."""
    if family == "sd15":
        return Architecture(family, UNetConfig.sd15(), VAEConfig.sd(), {"l": TextEncoderConfig.clip_l()})
    if family == "sd2":
        return Architecture(family, UNetConfig.sd2(), VAEConfig.sd(), {"h": TextEncoderConfig.vit_h()}, "v")
    if family == "sdxl":
        return Architecture(family, UNetConfig.sdxl(), VAEConfig.sd(),
                            {"l": TextEncoderConfig.clip_l(), "g": TextEncoderConfig.vit_bigg()})
    if family == "sdxl_refiner":
        return Architecture(family, UNetConfig.sdxl_refiner(), VAEConfig.sd(), {"g": TextEncoderConfig.vit_bigg()})
    if family in ("sd21_unclip_l", "sd21_unclip_h"):
        unet = replace(UNetConfig.sd2(), adm_in_channels=2 * FAMILIES[family].unclip_dim)
        return Architecture(family, unet, VAEConfig.sd(), {"h": TextEncoderConfig.vit_h()}, "v")
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def tiny_architecture(family: str) -> Architecture:
    """A few-MB architecture of the family's exact layout, for tests."""
    vae = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
    small = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                 transformer_depth_middle=1, transformer_depth_output=(1, 1, 1, 1))
    if family == "sd15":
        text = {"l": TextEncoderConfig(32, 64, 2, 2, projection_dim=None)}
        unet = UNetConfig(**small, context_dim=32, num_heads=8, num_head_channels=-1)
        return Architecture(family, unet, vae, text)
    if family == "sd2":
        text = {"h": TextEncoderConfig(32, 64, 3, 2, act="gelu", projection_dim=32)}
        unet = UNetConfig(**small, context_dim=32, num_heads=-1, num_head_channels=16, use_linear_in_transformer=True)
        return Architecture(family, unet, vae, text, "v")
    if family == "sdxl":
        text = {"l": TextEncoderConfig(16, 32, 3, 2, projection_dim=None),
                "g": TextEncoderConfig(16, 32, 3, 2, act="gelu", projection_dim=16)}
        unet = UNetConfig(**small, context_dim=32, num_heads=-1, num_head_channels=16, use_linear_in_transformer=True,
                          adm_in_channels=16 + 6 * 256)
        return Architecture(family, unet, vae, text)
    if family == "sdxl_refiner":
        text = {"g": TextEncoderConfig(16, 32, 3, 2, act="gelu", projection_dim=16)}
        unet = UNetConfig(**small, context_dim=16, num_heads=-1, num_head_channels=16, use_linear_in_transformer=True,
                          adm_in_channels=16 + 5 * 256)
        return Architecture(family, unet, vae, text)
    if family in TINY_UNCLIP_DIMS:
        sd2 = tiny_architecture("sd2")
        sd2.unet = replace(sd2.unet, adm_in_channels=2 * TINY_UNCLIP_DIMS[family])
        return Architecture(family, sd2.unet, vae, sd2.text, "v")
    raise ValueError(f"no tiny architecture for family {family!r}; choose {', '.join(FAMILIES)}")


def size_embedding(values: list[float], dim: int = 256) -> torch.Tensor:
    """SDXL's micro-conditioning: each value through the timestep embedding, concatenated (1, n*dim)."""
    return torch.cat([timestep_embedding(torch.tensor([float(v)]), dim) for v in values], dim=-1)


def sdxl_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
             target_width: int | None = None, target_height: int | None = None) -> torch.Tensor:
    """SDXL base's vector conditioning y (B, 2816): pooled text, then the size embeddings of
    height, width, crop_h, crop_w, target_height, target_width."""
    sizes = [height, width, crop_h, crop_w, target_height or height, target_width or width]
    flat = size_embedding(sizes).to(pooled).repeat(pooled.shape[0], 1)
    return torch.cat([pooled, flat], dim=1)


def sdxl_refiner_adm(pooled: torch.Tensor, width: int, height: int, crop_w: int = 0, crop_h: int = 0,
                     aesthetic_score: float = 6.0) -> torch.Tensor:
    """The refiner's y (B, 2560): pooled text, then height, width, crop_h, crop_w, aesthetic score."""
    flat = size_embedding([height, width, crop_h, crop_w, aesthetic_score]).to(pooled).repeat(pooled.shape[0], 1)
    return torch.cat([pooled, flat], dim=1)
