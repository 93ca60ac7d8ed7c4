"""Model files latentgraph would sample wrongly, refused with what was detected; and the
derivatives that load (SDXL's smaller UNets, SDXL's EDM models, InstructPix2Pix).

Three classes are refused, checked for every checkpoint whatever told us its family (keys or our
metadata):

- marker keys of sampling variants whose sampling is not implemented: Stable Zero123, video UNets,
  and the EDM markers on anything but an SDXL UNet (ComfyUI reads them only there);
- a layout that is not its family's: input and output channels, the vector input ``label_emb``,
  the transformers' projections, the context width, the VAE's latent channels, the text encoders'
  vocabulary; shapes that name a variant (the x4 upscaler's 7 input channels, Lotus' 4-wide
  ``label_emb``) are reported as that variant;
- tensors outside the networks that no rule knows: they may mark a variant we have not heard of,
  so they are refused rather than ignored.

What is implemented passes: v-prediction (``v_pred``; SD2's 768-v weights), zero terminal SNR
(``ztsnr``), 9-channel inpainting UNets, 8-channel InstructPix2Pix UNets (SD1, SDXL), SD2.1-unCLIP
(its ``noise_augmentor.*`` and image encoder ``embedder.model.*`` are known tensors of the unCLIP
families), SDXL UNets with fewer blocks (SSD-1B, Vega, KOALA: their layout is read from the keys)
and SDXL's continuous-EDM models as ComfyUI tells them apart (``edm_mean`` with ``edm_std``:
Playground v2.5, EDM preconditioning over sigmas 0.002..80 with its own latent mean and std;
``edm_vpred.sigma_max`` (and ``sigma_min``): CosXL, v-prediction over those sigmas).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .errors import CheckpointError
from .families import UNET_PREFIX, VAE_PREFIX, Architecture, Family, full_architecture, tiny_architecture
from .unet import UNetConfig

# Tensors real checkpoints carry besides the networks that change nothing here: DDPM schedule
# buffers (the schedule is computed), EMA bookkeeping and copies, sgm's denoiser buffers, the
# prediction markers that are read, and whatever else sits under the VAE's prefix (loss weights:
# the VAE itself takes only encoder/decoder/quant_conv/post_quant_conv).
HARMLESS_PREFIXES = ("model_ema.", "model.diffusion_model_ema.", "betas", "alphas_cumprod", "sqrt_",
                     "log_one_minus", "posterior_", "lvlb_weights", "logvar", "v_pred", "ztsnr", "denoiser.",
                     VAE_PREFIX, "edm_mean", "edm_std", "edm_vpred.")

# Top-level key prefix -> the variant it marks.
MARKERS = (
    ("cc_projection.", "Stable Zero123 novel-view model (cc_projection: camera-conditioned image input)"),
)
# Top-level keys that choose continuous EDM sampling, read on SDXL UNets only (apply_edm_markers)
EDM_MARKERS = ("edm_mean", "edm_std", "edm_vpred.")
# Part of a UNet key -> the variant it marks.
UNET_MARKERS = (
    ("label_emb.weight", "class-conditional UNet (label_emb.weight is a class embedding table, as in the "
                         "SD x4 upscaler)"),
    (".time_stack.", "video UNet (temporal layers time_stack, as in Stable Video Diffusion)"),
    (".time_mixer.", "video UNet (temporal layers time_mixer, as in Stable Video Diffusion)"),
)
CLIP_VOCAB, CLIP_POSITIONS = 49408, 77  # what the tokenizer makes: ids < 49408, chunks of 77


def refusal(source: str, variant: str) -> CheckpointError:
    return CheckpointError(
        f"{source}: detected a {variant}. latentgraph does not implement its sampling yet, and loaded as a "
        f"plain model it would give wrong pictures, so the file is refused")


def refuse_markers(sd: dict, source: str) -> None:
    """Raise if any key marks a variant whose sampling latentgraph does not have."""
    for key in sorted(sd):
        for prefix, variant in MARKERS:
            if key.startswith(prefix):
                raise refusal(source, variant)
        if key.startswith(UNET_PREFIX):
            for part, variant in UNET_MARKERS:
                if part in key[len(UNET_PREFIX) - 1:]:
                    raise refusal(source, variant)


def _scalar(sd: dict, key: str, source: str) -> float:
    value = sd[key]
    if getattr(value, "is_meta", True) or value.numel() != 1:
        raise CheckpointError(f"{source}: {key} must be a single number (CosXL's continuous-sigma bound), "
                              f"found shape {tuple(getattr(value, 'shape', ()))}")
    number = float(value)
    if not 0 < number < float("inf"):
        raise CheckpointError(f"{source}: {key} = {number:g}; a sigma bound must be positive and finite")
    return number


def apply_edm_markers(sd: dict, arch: Architecture, source: str) -> Architecture:
    """ComfyUI's choice of sampling for SDXL files (supported_models.SDXL.model_type): both
    ``edm_mean`` and ``edm_std`` -> Playground v2.5 (EDM preconditioning, sigma_data 0.5, sigmas
    0.002..80, its latent format); ``edm_vpred.sigma_max`` -> CosXL (v-prediction over continuous
    sigmas from sigma_min (default 0.002) to that). The keys win over our metadata, as in ComfyUI."""
    found = sorted(k for k in sd if k.startswith(EDM_MARKERS))
    if not found:
        return arch
    if arch.family != "sdxl":
        raise refusal(source, f"{arch.spec.label} model with the continuous-EDM marker {found[0]} (ComfyUI reads "
                              f"these markers on SDXL models only)")
    if "edm_mean" in sd and "edm_std" in sd:
        return replace(arch, prediction="edm", sigma_range=(0.002, 80.0), latent_format="playground_v25")
    if "edm_vpred.sigma_max" in sd:
        low = _scalar(sd, "edm_vpred.sigma_min", source) if "edm_vpred.sigma_min" in sd else 0.002
        high = _scalar(sd, "edm_vpred.sigma_max", source)
        if low >= high:
            raise CheckpointError(f"{source}: edm_vpred.sigma_min = {low:g} is not below edm_vpred.sigma_max = "
                                  f"{high:g}")
        return replace(arch, prediction="v", sigma_range=(low, high), latent_format=None)
    raise refusal(source, f"SDXL model with {', '.join(found)} but not the set that chooses its sampling "
                          f"(edm_mean with edm_std: Playground v2.5; edm_vpred.sigma_max: CosXL)")


def unet_variant(cfg: UNetConfig) -> str | None:
    """The variant a UNet's own shapes show (whatever the text encoders), or None for a plain one."""
    if cfg.in_channels == 7:
        return "SD x4 upscaler-style UNet (7 input channels: the latent plus a low-resolution image)"
    if cfg.in_channels not in (4, 8, 9):
        return (f"UNet with {cfg.in_channels} input channels (4 expected, 9 for inpainting, 8 for "
                f"InstructPix2Pix)")
    if cfg.out_channels != 4:
        return f"UNet with {cfg.out_channels} output channels (4 expected)"
    if cfg.context_dim == 1024 and cfg.adm_in_channels == 4:
        return "Lotus-style UNet (an SD2 UNet whose label_emb takes a 4-wide task input: depth/normal estimation)"
    return None


# the extra tensors of an unCLIP checkpoint: the noise schedule of its image embeddings (computed,
# not read) and the CLIP image encoder (the published files keep the whole OpenCLIP model less its
# text transformer under embedder.model.; the image encoder is embedder.model.visual.)
UNCLIP_PREFIXES = ("noise_augmentor.", "embedder.model.")


def _expected_adm(arch: Architecture) -> int | None:
    sizes = arch.spec.adm_sizes
    if sizes is None:
        return None
    pooled = arch.text[arch.spec.text[-1].name].projection_dim or 0
    return pooled + 256 * sizes


def _adm_problem(arch: Architecture) -> str | None:
    family, found = arch.spec, arch.unet.adm_in_channels
    have = "no label_emb" if found is None else f"a label_emb of width {found}"
    if family.unclip_dim is not None:  # any even width: tiny unCLIP models take narrower embeddings
        if found is None or found <= 0 or found % 2:
            return (f"the UNet has {have}, expected an even width (a CLIP image embedding and its noise level; "
                    f"{2 * family.unclip_dim} at full size)")
        return None
    adm = _expected_adm(arch)
    if found == adm:
        return None
    want = "none" if adm is None else (f"width {adm} (pooled text {adm - 256 * family.adm_sizes} + "
                                       f"{family.adm_sizes} size embeddings of 256)")
    return f"the UNet has {have}, expected {want}"


def layout_problems(arch: Architecture) -> list[str]:
    """How an architecture differs from its family's table, as 'detected X, expected Y' phrases."""
    family, unet, out = arch.spec, arch.unet, []
    adm = _adm_problem(arch)
    if adm is not None:
        out.append(adm)
    if unet.use_linear_in_transformer != family.linear_proj:
        def kind(linear: bool) -> str:
            return "Linear layers" if linear else "1x1 convolutions"
        out.append(f"the UNet's proj_in/proj_out are {kind(unet.use_linear_in_transformer)}, expected "
                   f"{kind(family.linear_proj)}")
    width = sum(c.hidden_size for c in arch.text.values())
    if family.name == "sdxl_refiner" and "g" in arch.text:
        width = arch.text["g"].hidden_size
    if unet.context_dim != width:
        out.append(f"the UNet's context width is {unet.context_dim}, expected the text encoders' width {width}")
    if set(arch.text) != {slot.name for slot in family.text}:
        out.append(f"text encoders {sorted(arch.text)}, expected {[slot.name for slot in family.text]}")
    out += _vae_text_problems(arch)
    if arch.prediction not in ("eps", "v") and not (arch.prediction == "edm" and arch.sigma_range is not None):
        out.append(f"prediction {arch.prediction!r}, expected 'eps' or 'v' ('edm' only with continuous sigmas)")
    if arch.unet.in_channels == 8 and family.name not in ("sd15", "sdxl"):
        out.append("8 input channels (InstructPix2Pix) on a UNet of neither SD1.x nor SDXL")
    return out


def _vae_text_problems(arch: Architecture) -> list[str]:
    out = []
    vae = arch.vae
    if vae.embed_dim != 4:
        out.append(f"the VAE has {vae.embed_dim} latent channels, expected 4")
    if (vae.in_channels, vae.out_ch) != (3, 3):
        out.append(f"the VAE takes {vae.in_channels} and gives {vae.out_ch} image channels, expected 3")
    for name, cfg in arch.text.items():
        if cfg.vocab_size != CLIP_VOCAB:
            out.append(f"text encoder '{name}' has {cfg.vocab_size} token embeddings, expected {CLIP_VOCAB} "
                       f"(the CLIP tokenizer's)")
        if cfg.max_positions != CLIP_POSITIONS:
            out.append(f"text encoder '{name}' has {cfg.max_positions} positions, expected {CLIP_POSITIONS}")
    return out


def check_layout(arch: Architecture, source: str) -> None:
    """Raise unless the architecture is one latentgraph samples as its family: a known variant by
    name, anything else with every difference from the family's table."""
    variant = unet_variant(arch.unet)
    if variant is not None:
        raise refusal(source, variant)
    problems = layout_problems(arch)
    if problems:
        raise CheckpointError(
            f"{source}: does not have the layout of {arch.spec.label}: " + "; ".join(problems)
            + ". latentgraph loads only the layouts it samples correctly, so the file is refused")


def check_vae_layout(arch_vae, source: str) -> None:
    """A standalone VAE must make the 4-channel latents of the SD families from RGB images."""
    if arch_vae.embed_dim != 4 or (arch_vae.in_channels, arch_vae.out_ch) != (3, 3):
        raise CheckpointError(
            f"{source}: a VAE with {arch_vae.embed_dim} latent channels and {arch_vae.in_channels}/"
            f"{arch_vae.out_ch} image channels in/out; the Stable Diffusion families use 4 latent channels "
            f"and RGB images (a VAE of another model family?), so the file is refused")


def _group_names(keys: list[str], limit: int = 8) -> str:
    groups: dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        name = ".".join(parts[:2]) + (".*" if len(parts) > 2 else "")
        groups[name] = groups.get(name, 0) + 1
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{name} ({n})" for name, n in ranked[:limit])
    return text + (f", ... ({len(ranked)} groups in all)" if len(ranked) > limit else "")


def refuse_unknown(sd: dict, family: Family, source: str) -> None:
    """Raise if the file holds tensors that are no part of a checkpoint of ``family``."""
    known = (UNET_PREFIX, *(slot.prefix for slot in family.text), *HARMLESS_PREFIXES,
             *(UNCLIP_PREFIXES if family.unclip_dim is not None else ()))
    stray = [key for key in sd if not key.startswith(known)]
    if stray:
        raise CheckpointError(
            f"{source}: holds {len(stray)} tensors that are no part of a {family.label} checkpoint: "
            f"{_group_names(stray)}. They may mark a model variant that samples differently, so the file is "
            f"refused rather than loaded without them (if they are leftovers of training, save the file "
            f"without them)")


# -- derivatives that load (make-checkpoint --variant) -------------------------------------
# SDXL UNets with fewer transformer blocks, ComfyUI's numbers (supported_models.py SSD1B,
# Segmind_Vega, KOALA_700M, KOALA_1B): transformer blocks per level on the input side, in the
# middle (-1: a lone ResBlock, -2: no middle block) and per output block (output_blocks.0 last).
# ResBlocks per level: 2 (SDXL's) or 1 (KOALA).
SDXL_DERIVATIVES = {
    "ssd1b": dict(num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 4), transformer_depth_middle=-1,
                  transformer_depth_output=(0, 0, 0, 1, 1, 2, 10, 4, 4)),
    "vega": dict(num_res_blocks=(2, 2, 2), transformer_depth=(0, 1, 2), transformer_depth_middle=-1,
                 transformer_depth_output=(0, 0, 0, 1, 1, 1, 2, 2, 2)),
    "koala_700m": dict(num_res_blocks=(1, 1, 1), transformer_depth=(0, 2, 5), transformer_depth_middle=-2,
                       transformer_depth_output=(0, 0, 2, 2, 5, 5)),
    "koala_1b": dict(num_res_blocks=(1, 1, 1), transformer_depth=(0, 2, 6), transformer_depth_middle=6,
                     transformer_depth_output=(0, 0, 2, 2, 6, 6)),
}
# the tiny files keep each layout's shape (which levels and blocks have transformers, the middle
# block, ResBlocks per level) with at most 3 transformer blocks, so they stay a few MB
TINY_SDXL_DERIVATIVES = {
    "ssd1b": dict(num_res_blocks=(2, 2, 2), transformer_depth=(0, 1, 2), transformer_depth_middle=-1,
                  transformer_depth_output=(0, 0, 0, 1, 1, 2, 3, 2, 2)),
    "vega": SDXL_DERIVATIVES["vega"],
    "koala_700m": dict(num_res_blocks=(1, 1, 1), transformer_depth=(0, 1, 2), transformer_depth_middle=-2,
                       transformer_depth_output=(0, 0, 1, 1, 2, 2)),
    "koala_1b": dict(num_res_blocks=(1, 1, 1), transformer_depth=(0, 1, 2), transformer_depth_middle=2,
                     transformer_depth_output=(0, 0, 1, 1, 2, 2)),
}
# SDXL models sampled with continuous EDM sigmas, told apart by marker tensors (make-checkpoint
# writes them as the published files have them)
EDM_VARIANTS = ("playground_v25", "cosxl")
# InstructPix2Pix: an 8-channel UNet (the noisy latent and the input image's latent)
VARIANTS = (*SDXL_DERIVATIVES, *EDM_VARIANTS, "ip2p")
PLAYGROUND_MEAN, PLAYGROUND_STD = (-1.6574, 1.886, -1.383, 2.5155), (8.4927, 5.9022, 6.5498, 5.2299)
COSXL_SIGMAS = (0.002, 120.0)  # (sigma_min, sigma_max) of CosXL's edm_vpred.* tensors


def variant_architecture(family: str, variant: str, size: str) -> Architecture:
    """The architecture of a derivative of ``family`` ("tiny" or "full" size)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown checkpoint variant {variant!r}; known: {', '.join(VARIANTS)}")
    wanted = ("sd15", "sdxl") if variant == "ip2p" else ("sdxl",)
    if family not in wanted:
        raise ValueError(f"the {variant} variant is of {' or '.join(wanted)}, not {family}")
    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    if variant in SDXL_DERIVATIVES:
        table = TINY_SDXL_DERIVATIVES if size == "tiny" else SDXL_DERIVATIVES
        levels = dict(channel_mult=(1, 1, 2)) if size == "tiny" else {}  # three levels, as SDXL
        arch.unet = replace(arch.unet, **levels, **table[variant])
    elif variant == "ip2p":
        arch.unet = replace(arch.unet, in_channels=8)
    elif variant == "playground_v25":
        arch = replace(arch, prediction="edm", sigma_range=(0.002, 80.0), latent_format="playground_v25")
    elif variant == "cosxl":
        arch = replace(arch, prediction="v", sigma_range=COSXL_SIGMAS)
    return arch


def variant_marker_tensors(variant: str) -> dict[str, torch.Tensor]:
    """The tensors besides the networks that mark a variant in a published file."""
    if variant == "playground_v25":
        return {"edm_mean": torch.tensor(PLAYGROUND_MEAN).view(1, 4, 1, 1),
                "edm_std": torch.tensor(PLAYGROUND_STD).view(1, 4, 1, 1)}
    if variant == "cosxl":
        return {"edm_vpred.sigma_min": torch.tensor(COSXL_SIGMAS[0]),
                "edm_vpred.sigma_max": torch.tensor(COSXL_SIGMAS[1])}
    return {}
