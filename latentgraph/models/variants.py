"""Model files latentgraph would sample wrongly, refused with what was detected.

Three classes, checked for every checkpoint whatever told us its family (keys or our metadata):

- marker keys of sampling variants whose sampling is not implemented: EDM models (Playground
  v2.5's ``edm_mean``/``edm_std``, CosXL's ``edm_vpred.*``), Stable Zero123, video UNets;
- a layout that is not its family's: input and output channels, the vector input ``label_emb``,
  the transformers' projections, the context width, the VAE's latent channels, the text encoders'
  vocabulary; shapes that name a variant (InstructPix2Pix's 8 input channels, the x4 upscaler's 7,
  Lotus' 4-wide ``label_emb``) are reported as that variant;
- tensors outside the networks that no rule knows: they may mark a variant we have not heard of,
  so they are refused rather than ignored.

What is implemented passes: v-prediction (``v_pred``; SD2's 768-v weights), zero terminal SNR
(``ztsnr``), 9-channel inpainting UNets and SD2.1-unCLIP (its ``noise_augmentor.*`` and image
encoder ``embedder.model.*`` are known tensors of the unCLIP families).
"""

from __future__ import annotations

from .errors import CheckpointError
from .families import UNET_PREFIX, VAE_PREFIX, Architecture, Family
from .unet import UNetConfig

# Tensors real checkpoints carry besides the networks that change nothing here: DDPM schedule
# buffers (the schedule is computed), EMA bookkeeping and copies, sgm's denoiser buffers, the
# prediction markers that are read, and whatever else sits under the VAE's prefix (loss weights:
# the VAE itself takes only encoder/decoder/quant_conv/post_quant_conv).
HARMLESS_PREFIXES = ("model_ema.", "model.diffusion_model_ema.", "betas", "alphas_cumprod", "sqrt_",
                     "log_one_minus", "posterior_", "lvlb_weights", "logvar", "v_pred", "ztsnr", "denoiser.",
                     VAE_PREFIX)

# Top-level key prefix -> the variant it marks.
MARKERS = (
    ("edm_mean", "Playground v2.5-style EDM model (keys edm_mean/edm_std: EDM sampling with its own latent "
                 "mean and std)"),
    ("edm_std", "Playground v2.5-style EDM model (keys edm_mean/edm_std: EDM sampling with its own latent "
                "mean and std)"),
    ("edm_vpred.", "CosXL-style EDM v-prediction model ({evidence}: continuous EDM sigmas)"),
    ("cc_projection.", "Stable Zero123 novel-view model (cc_projection: camera-conditioned image input)"),
)
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


def _evidence(sd: dict, key: str) -> str:
    """``key = value`` for a scalar that can be read (not on the meta device), else the key."""
    value = sd[key]
    if getattr(value, "is_meta", True) or value.numel() != 1:
        return key
    return f"{key} = {float(value):g}"


def refuse_markers(sd: dict, source: str) -> None:
    """Raise if any key marks a variant whose sampling latentgraph does not have."""
    for key in sorted(sd):
        for prefix, variant in MARKERS:
            if key.startswith(prefix):
                raise refusal(source, variant.format(evidence=_evidence(sd, key)))
        if key.startswith(UNET_PREFIX):
            for part, variant in UNET_MARKERS:
                if part in key[len(UNET_PREFIX) - 1:]:
                    raise refusal(source, variant)


def unet_variant(cfg: UNetConfig) -> str | None:
    """The variant a UNet's own shapes show (whatever the text encoders), or None for a plain one."""
    if cfg.in_channels == 8:
        return "InstructPix2Pix-style UNet (8 input channels: the noisy latent plus an image's latent)"
    if cfg.in_channels == 7:
        return "SD x4 upscaler-style UNet (7 input channels: the latent plus a low-resolution image)"
    if cfg.in_channels not in (4, 9):
        return f"UNet with {cfg.in_channels} input channels (4 expected, or 9 for inpainting)"
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
    if arch.prediction not in ("eps", "v"):
        out.append(f"prediction {arch.prediction!r}, expected 'eps' or 'v'")
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
