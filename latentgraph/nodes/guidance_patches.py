"""Model patches of ComfyUI 0.3.64 core that change guidance or attention weights: CFGNorm,
Epsilon Scaling, Mahiro, TCFG, FreSca, the old PerpNeg node, and UNetSelfAttentionMultiply,
UNetCrossAttentionMultiply, UNetTemporalAttentionMultiply, CLIPAttentionMultiply.

Each guidance patch is a plain function of ComfyUI's argument dict (docs/model-options.md),
set on a clone of the MODEL; the input model is never changed. The attention multipliers make a
new network whose q/k/v/out projections are the base's times a factor (the base's other tensors
are shared)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Callable

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import CLIP, CONDITIONING, MODEL, Float, Int, Output, node
TextModel = lazy("..models.clip", "TextModel")
apply_lora = lazy("..models.lora", "apply_lora")
calc_cond_batch = lazy("..sampling.guidance", "calc_cond_batch")
perp_neg = lazy("..sampling.multi_guidance", "perp_neg")
from .sd import SDModel, to_conds

Tensor = lazy("torch", "Tensor")
_PATCHED = Output("MODEL", "patched_model")


# -- after CFG: sampler_post_cfg_function ----------------------------------------------------

def cfg_norm(strength: float) -> Callable:
    """CFGNorm's post-CFG function: the guided prediction scaled down per pixel so its norm over
    the channels is at most the positive prediction's, then times ``strength``."""
    def fn(args: dict) -> Tensor:
        cond, guided = args["cond_denoised"], args["denoised"]
        ratio = torch.norm(cond, dim=1, keepdim=True) / (torch.norm(guided, dim=1, keepdim=True) + 1e-8)
        return guided * ratio.clamp(min=0.0, max=1.0) * strength
    return fn


@node(category="advanced/guidance", outputs=[_PATCHED], experimental=True, python_module="comfy_extras.nodes_cfg")
def CFGNorm(model: Annotated[SDModel, MODEL],
            strength: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01)]) -> SDModel:
    """Keeps the guided prediction's per-pixel norm within the positive prediction's."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(cfg_norm(strength))
    return m


def epsilon_scaling(factor: float) -> Callable:
    """The post-CFG function of Epsilon Scaling (Ning et al. 2023, "Elucidating the Exposure Bias
    in Diffusion Models", uniform schedule): the predicted noise x - denoised divided by
    ``factor``."""
    def fn(args: dict) -> Tensor:
        x = args["input"]
        return x - (x - args["denoised"]) / factor
    return fn


@node("Epsilon Scaling", category="model_patches/unet", outputs=[MODEL], python_module="comfy_extras.nodes_eps")
def EpsilonScaling(model: Annotated[SDModel, MODEL],
                   scaling_factor: Annotated[float, Float(1.005, min=0.5, max=1.5, step=0.001, display="number")]
                   ) -> SDModel:
    """Divides the predicted noise by scaling_factor at every step (against exposure bias)."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(epsilon_scaling(scaling_factor))
    return m


def mahiro(args: dict) -> Tensor:
    """Mahiro's post-CFG function: blend the CFG result with cond_scale x the positive prediction,
    by how similar (cosine over channels of the signed square roots, averaged over the batch
    and pixels) the negative's leap is to the mean of the two."""
    scale, cond, uncond, guided = args["cond_scale"], args["cond_denoised"], args["uncond_denoised"], args["denoised"]
    leap, u_leap = cond * scale, uncond * scale
    merge = (leap + guided) / 2
    root_u = torch.sqrt(u_leap.abs()) * u_leap.sign()
    root_m = torch.sqrt(merge.abs()) * merge.sign()
    weight = 2 * (F.cosine_similarity(root_u, root_m).mean() + 1)  # 0..4
    return (weight * guided + (4 - weight) * leap) / 4


@node(category="_for_testing", outputs=[_PATCHED], experimental=True, python_module="comfy_extras.nodes_mahiro",
      display_name="Mahiro is so cute that she deserves a better guidance function!! (。・ω・。)")
def Mahiro(model: Annotated[SDModel, MODEL]) -> SDModel:
    """Modify the guidance to scale more on the 'direction' of the positive prompt rather than the
    difference between the negative prompt."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(mahiro)
    return m


# -- before CFG: sampler_pre_cfg_function --------------------------------------------------

def tangential_damping(cond_score: Tensor, uncond_score: Tensor) -> Tensor:
    """TCFG (Kwon et al. 2025, arXiv 2503.18137): the negative score projected on the first right
    singular vector of the [negative; positive] score matrix of each sample, dropping its
    tangential part."""
    b = cond_score.shape[0]
    uncond = uncond_score.reshape(b, 1, -1).float()  # (B, 1, N)
    matrix = torch.cat((uncond, cond_score.reshape(b, 1, -1).float()), dim=1)  # (B, 2, N)
    _, _, vh = torch.linalg.svd(matrix.cpu(), full_matrices=False)
    v1 = vh[:, 0:1, :].to(uncond.device)  # (B, 1, N)
    return ((uncond @ v1.transpose(-2, -1)) * v1).reshape_as(uncond_score).to(uncond_score.dtype)


def tcfg(args: dict) -> list:
    """TCFG's pre-CFG function: replaces the negative prediction by x minus its damped noise."""
    x, out = args["input"], args["conds_out"]
    if len(out) <= 1 or None in args["conds"][:2]:
        return out  # no negative this step (cfg 1): nothing to damp
    cond, uncond = out[0], out[1]
    return [cond, x - tangential_damping(x - cond, x - uncond)] + list(out[2:])


@node(category="advanced/guidance", display_name="Tangential Damping CFG", outputs=[_PATCHED],
      python_module="comfy_extras.nodes_tcfg")
def TCFG(model: Annotated[SDModel, MODEL]) -> SDModel:
    """TCFG – Tangential Damping CFG (2503.18137)

    Refine the uncond (negative) to align with the cond (positive) for improving quality."""
    m = model.clone()
    m.set_model_sampler_pre_cfg_function(tcfg)
    return m


def frequency_scale(x: Tensor, scale_low: float, scale_high: float, freq_cutoff: int) -> Tensor:
    """FreSca (Huang et al. 2025): x's centred 2-D spectrum scaled by scale_low inside a window of
    2 * min(freq_cutoff, size // 2) frequencies around the centre on each spatial axis, and by
    scale_high outside it. x (B, C, H, W), computed in float32."""
    dtype = x.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, float(scale_high), device=x.device)
    window = mask
    for dim in range(2, spectrum.ndim):
        centre = spectrum.shape[dim] // 2
        half = min(freq_cutoff, centre)
        window = window.narrow(dim, centre - half, 2 * half)
    window.fill_(scale_low)
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(dtype)


def fresca(scale_low: float, scale_high: float, freq_cutoff: int) -> Callable:
    """FreSca's pre-CFG function: the guidance direction (positive - negative) frequency-scaled."""
    def fn(args: dict) -> list:
        out = args["conds_out"]
        if len(out) <= 1 or None in args["conds"][:2]:
            return out
        cond, uncond = out[0], out[1]
        return [frequency_scale(cond - uncond, scale_low, scale_high, freq_cutoff) + uncond, uncond] + list(out[2:])
    return fn


@node(category="_for_testing", display_name="FreSca", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_fresca")
def FreSca(
    model: Annotated[SDModel, MODEL],
    scale_low: Annotated[float, Float(1.0, min=0, max=10, step=0.01,
                                      tooltip="Scaling factor for low-frequency components")],
    scale_high: Annotated[float, Float(1.25, min=0, max=10, step=0.01,
                                       tooltip="Scaling factor for high-frequency components")],
    freq_cutoff: Annotated[int, Int(20, min=1, max=10000, step=1,
                                    tooltip="Number of frequency indices around center to consider as low-frequency")],
) -> SDModel:
    """Applies frequency-dependent scaling to the guidance"""
    m = model.clone()
    m.set_model_sampler_pre_cfg_function(fresca(scale_low, scale_high, freq_cutoff))
    return m


# -- the old PerpNeg node: sampler_cfg_function ----------------------------------------------

def perp_neg_cfg(empty_conditioning: list, neg_scale: float) -> Callable:
    """PerpNeg's sampler_cfg_function: predicts the empty prompt (as a negative prompt) at each
    step, then Perp-Neg guidance as PerpNegGuider's (sampling/multi_guidance.perp_neg). It
    returns the noise x - result, as a sampler_cfg_function does."""
    def fn(args: dict) -> Tensor:
        model, x, sigma = args["model"], args["input"], args["sigma"]
        empty = to_conds(model, empty_conditioning, x.shape, "negative", x.device)
        (empty_pred,) = calc_cond_batch(model.apply_model, [empty], x, sigma, args["model_options"], model)
        return x - perp_neg(args["cond_denoised"], args["uncond_denoised"], empty_pred, neg_scale, args["cond_scale"])
    return fn


@node(category="_for_testing", display_name="Perp-Neg (DEPRECATED by PerpNegGuider)", outputs=[MODEL],
      experimental=True, deprecated=True, python_module="comfy_extras.nodes_perpneg")
def PerpNeg(model: Annotated[SDModel, MODEL], empty_conditioning: Annotated[list, CONDITIONING],
            neg_scale: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01)]) -> SDModel:
    """Perp-Neg guidance as a model patch: one more model call per step, for the empty prompt.
    PerpNegGuider does the same with the three predictions in one batch."""
    m = model.clone()
    m.set_model_sampler_cfg_function(perp_neg_cfg(empty_conditioning, neg_scale))
    return m


# -- attention weights ----------------------------------------------------------------------

class Scale:
    """A weight patch for models.lora.apply_lora: the weight times ``factor`` (ComfyUI's
    add_patches with strength_model = factor and a null patch)."""

    def __init__(self, factor: float):
        self.factor = factor

    def apply(self, weight: Tensor, strength: float) -> Tensor:
        return weight * self.factor


def scaled_projections(module: torch.nn.Module, suffixes: dict[str, float]) -> torch.nn.Module:
    """``module`` with each parameter whose name ends in one of ``suffixes`` scaled by its factor;
    a factor of exactly 1 is left out (the same tensor). Returns the module itself when nothing
    changes."""
    patches = {}
    for name, _ in module.named_parameters():
        for suffix, factor in suffixes.items():
            if factor != 1.0 and (name.endswith(suffix + ".weight") or name.endswith(suffix + ".bias")):
                patches[name] = Scale(factor)
    return apply_lora(module, patches) if patches else module


_FACTOR = Float(1.0, min=0.0, max=10.0, step=0.01)


def _unet_multiply(model: SDModel, attn: str, q: float, k: float, v: float, out: float) -> SDModel:
    suffixes = {f"{attn}.to_q": q, f"{attn}.to_k": k, f"{attn}.to_v": v, f"{attn}.to_out.0": out}
    unet = scaled_projections(model.unet, suffixes)
    if unet is model.unet:
        return model.clone()
    return model.clone(unet=unet, patches=model.patches + ((f"{attn} x q{q} k{k} v{v} out{out}", 1.0),))


@node(category="_for_testing/attention_experiments", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_attention_multiply")
def UNetSelfAttentionMultiply(model: Annotated[SDModel, MODEL], q: Annotated[float, _FACTOR],
                              k: Annotated[float, _FACTOR], v: Annotated[float, _FACTOR],
                              out: Annotated[float, _FACTOR]) -> SDModel:
    """Scales the weights and biases of the UNet's self-attention (attn1) q, k, v and out projections."""
    return _unet_multiply(model, "attn1", q, k, v, out)


@node(category="_for_testing/attention_experiments", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_attention_multiply")
def UNetCrossAttentionMultiply(model: Annotated[SDModel, MODEL], q: Annotated[float, _FACTOR],
                               k: Annotated[float, _FACTOR], v: Annotated[float, _FACTOR],
                               out: Annotated[float, _FACTOR]) -> SDModel:
    """Scales the weights and biases of the UNet's cross-attention (attn2) q, k, v and out projections."""
    return _unet_multiply(model, "attn2", q, k, v, out)


@node(category="_for_testing/attention_experiments", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_attention_multiply")
def UNetTemporalAttentionMultiply(model: Annotated[SDModel, MODEL], self_structural: Annotated[float, _FACTOR],
                                  self_temporal: Annotated[float, _FACTOR], cross_structural: Annotated[float, _FACTOR],
                                  cross_temporal: Annotated[float, _FACTOR]) -> SDModel:
    """Scales the out projections of the UNet's self- and cross-attention: those of a video UNet's
    temporal layers (.time_stack.) by the *_temporal factors, the others by the *_structural ones.
    latentgraph's image UNets have no temporal layers, so there only the structural factors act
    (as in ComfyUI on an image model)."""
    factors = {(attn, temporal): f for attn, temporal, f in (
        ("attn1", False, self_structural), ("attn1", True, self_temporal),
        ("attn2", False, cross_structural), ("attn2", True, cross_temporal))}
    patches = {}
    for name, _ in model.unet.named_parameters():
        for attn in ("attn1", "attn2"):
            factor = factors[(attn, ".time_stack." in name)]
            if factor != 1.0 and name.endswith((f"{attn}.to_out.0.weight", f"{attn}.to_out.0.bias")):
                patches[name] = Scale(factor)
    if not patches:
        return model.clone()
    label = f"attention out x {self_structural} {self_temporal} {cross_structural} {cross_temporal}"
    return model.clone(unet=apply_lora(model.unet, patches), patches=model.patches + ((label, 1.0),))


@node(category="_for_testing/attention_experiments", outputs=[CLIP], experimental=True,
      python_module="comfy_extras.nodes_attention_multiply")
def CLIPAttentionMultiply(clip: Annotated[TextModel, CLIP], q: Annotated[float, _FACTOR],
                          k: Annotated[float, _FACTOR], v: Annotated[float, _FACTOR],
                          out: Annotated[float, _FACTOR]) -> TextModel:
    """Scales the weights and biases of every text encoder's self-attention q, k, v and out
    projections."""
    suffixes = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "self_attn.out_proj": out}
    encoders = {name: scaled_projections(enc, suffixes) for name, enc in clip.encoders.items()}
    return replace(clip, encoders=encoders)
