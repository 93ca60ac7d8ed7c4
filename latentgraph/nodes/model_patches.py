"""Model-patch nodes on the patch layer (docs/model-options.md): FreeU and FreeU_V2 (output
block patches), RescaleCFG (a cfg function), CFGZeroStar (a post-cfg function), APG (a pre-cfg
function) and DifferentialDiffusion (a denoise-mask function). Names, inputs, defaults and
numerics are ComfyUI's; each returns a clone and leaves its input model as it was."""

from __future__ import annotations

import logging
from typing import Annotated, Callable

from ..graph.lazy import lazy
torch = lazy("torch")

from ..graph import MODEL, Combo, Float, Output, node
from .sd import SDModel

log = logging.getLogger(__name__)


# -- FreeU (Si et al. 2023, "FreeU: Free Lunch in Diffusion U-Net") ---------------------------

def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest spatial frequencies of x (B, C, H, W): after centring the spectrum, the
    (2*threshold)^2 window around its middle is multiplied by ``scale``. Computed in float32
    (torch.fft has no half-precision kernels on most devices), returned in x's dtype."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    h, w = freq.shape[-2:]
    cy, cx = h // 2, w // 2
    mask = torch.ones((h, w), device=x.device)
    # the same slice as the reference code, negative starts included, so tiny maps match too
    mask[cy - threshold:cy + threshold, cx - threshold:cx + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def _filter_skip(hsp: torch.Tensor, scale: float) -> torch.Tensor:
    """fourier_filter on hsp's device, or on the CPU where that device has no FFT kernels."""
    try:
        return fourier_filter(hsp, 1, scale)
    except (RuntimeError, NotImplementedError) as e:
        if hsp.device.type == "cpu":
            raise
        log.warning("FreeU: torch.fft failed on %s (%s); filtering on the CPU", hsp.device, e)
        return fourier_filter(hsp.cpu(), 1, scale).to(hsp.device)


def _freeu_scales(model: SDModel, b1: float, b2: float, s1: float, s2: float) -> dict:
    """Backbone and skip factors by the width of h at an output block: b1/s1 where it is 4x
    model_channels (SD's third and fourth levels), b2/s2 where it is 2x."""
    mc = model.arch.unet.model_channels
    return {mc * 4: (b1, s1), mc * 2: (b2, s2)}


def _scale_half(h: torch.Tensor, factor) -> torch.Tensor:
    """h with its first half of channels multiplied by ``factor`` (a new tensor: h may be
    shared with the caller)."""
    half = h.shape[1] // 2
    return torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)


def _freeu(model: SDModel, b1: float, b2: float, s1: float, s2: float, backbone) -> SDModel:
    """A clone of ``model`` whose output blocks scale the backbone's first half of channels by
    ``backbone(h, b)`` and filter the skip's low frequencies by s (FreeU and FreeU_V2)."""
    scales = _freeu_scales(model, b1, b2, s1, s2)

    def output_block_patch(h, hsp, transformer_options):
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, hsp
        return _scale_half(h, backbone(h, scale[0])), _filter_skip(hsp, scale[1])

    m = model.clone()
    m.set_model_output_block_patch(output_block_patch)
    return m


FREEU_B = dict(min=0.0, max=10.0, step=0.01)


@node(category="model_patches/unet", display_name="FreeU", outputs=[MODEL],
      python_module="comfy_extras.nodes_freelunch")
def FreeU(
    model: Annotated[SDModel, MODEL],
    b1: Annotated[float, Float(1.1, **FREEU_B)],
    b2: Annotated[float, Float(1.2, **FREEU_B)],
    s1: Annotated[float, Float(0.9, **FREEU_B)],
    s2: Annotated[float, Float(0.2, **FREEU_B)],
) -> SDModel:
    """Reweights the decoder: backbone features x b, low frequencies of the skips x s."""
    return _freeu(model, b1, b2, s1, s2, lambda h, b: b)


@node(category="model_patches/unet", display_name="FreeU_V2", outputs=[MODEL],
      python_module="comfy_extras.nodes_freelunch")
def FreeU_V2(
    model: Annotated[SDModel, MODEL],
    b1: Annotated[float, Float(1.3, **FREEU_B)],
    b2: Annotated[float, Float(1.4, **FREEU_B)],
    s1: Annotated[float, Float(0.9, **FREEU_B)],
    s2: Annotated[float, Float(0.2, **FREEU_B)],
) -> SDModel:
    """FreeU with the backbone factor weighted by each pixel's normalised mean activation."""
    return _freeu(model, b1, b2, s1, s2, _mean_weighted)


def _mean_weighted(h: torch.Tensor, b: float) -> torch.Tensor:
    """FreeU_V2's backbone factor: 1 + (b - 1) x each pixel's mean activation normalised to 0..1
    per sample, (B, 1, H, W)."""
    mean = h.mean(1, keepdim=True)  # (B, 1, H, W)
    flat = mean.view(mean.shape[0], -1)
    lo = flat.min(dim=-1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=-1).values.view(-1, 1, 1, 1)
    weight = (mean - lo) / (hi - lo)  # 0..1 per sample
    return (b - 1) * weight + 1


# -- guidance --------------------------------------------------------------------------------

def rescale_cfg(multiplier: float) -> Callable[[dict], torch.Tensor]:
    """The sampler_cfg_function of RescaleCFG (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", sec. 3.4): guidance in v space, rescaled to the
    positive prediction's standard deviation and mixed back by ``multiplier``."""

    def fn(args: dict) -> torch.Tensor:
        x_orig = args["input"]
        sigma = args["sigma"]
        sigma = sigma.view(sigma.shape[:1] + (1,) * (x_orig.ndim - 1))
        x = x_orig / (sigma * sigma + 1.0)
        # noise predictions -> v predictions
        v_cond = (x - (x_orig - args["cond"])) * (sigma ** 2 + 1.0) ** 0.5 / sigma
        v_uncond = (x - (x_orig - args["uncond"])) * (sigma ** 2 + 1.0) ** 0.5 / sigma
        v_cfg = v_uncond + args["cond_scale"] * (v_cond - v_uncond)
        std_pos = torch.std(v_cond, dim=(1, 2, 3), keepdim=True)
        std_cfg = torch.std(v_cfg, dim=(1, 2, 3), keepdim=True)
        v_final = multiplier * (v_cfg * (std_pos / std_cfg)) + (1.0 - multiplier) * v_cfg
        # back to a noise prediction, as the cfg function must return
        return x_orig - (x - v_final * sigma / (sigma * sigma + 1.0) ** 0.5)

    return fn


@node(category="advanced/model", display_name="RescaleCFG", outputs=[MODEL],
      python_module="comfy_extras.nodes_model_advanced")
def RescaleCFG(
    model: Annotated[SDModel, MODEL],
    multiplier: Annotated[float, Float(0.7, min=0.0, max=1.0, step=0.01)],
) -> SDModel:
    """Rescales classifier-free guidance to keep high cfg from over-exposing (for v/zsnr models)."""
    m = model.clone()
    m.set_model_sampler_cfg_function(rescale_cfg(multiplier))
    return m


def zero_star_scale(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """CFG-Zero*'s per-sample projection scale <positive, negative> / |negative|^2, shaped to
    broadcast against positive (Fan et al. 2025, "CFG-Zero*")."""
    b = positive.shape[0]
    p, n = positive.reshape(b, -1), negative.reshape(b, -1)
    st = (p * n).sum(dim=1, keepdim=True) / ((n ** 2).sum(dim=1, keepdim=True) + 1e-8)
    return st.reshape([b] + [1] * (positive.ndim - 1))


def cfg_zero_star(args: dict) -> torch.Tensor:
    """The sampler_post_cfg_function of CFGZeroStar: the negative prediction scaled by the
    optimised alpha (of the two noise predictions) before guidance."""
    x, cond, uncond = args["input"], args["cond_denoised"], args["uncond_denoised"]
    alpha = zero_star_scale(x - cond, x - uncond)
    return args["denoised"] + uncond * (alpha - 1.0) + args["cond_scale"] * uncond * (1.0 - alpha)


@node(category="advanced/guidance", display_name="CFGZeroStar", outputs=[Output("MODEL", "patched_model")],
      python_module="comfy_extras.nodes_cfg")
def CFGZeroStar(model: Annotated[SDModel, MODEL]) -> SDModel:
    """CFG-Zero*: scales the negative prediction by its optimal projection onto the positive."""
    m = model.clone()
    m.set_model_sampler_post_cfg_function(cfg_zero_star)
    return m


def apg_function(eta: float, norm_threshold: float, momentum: float) -> Callable[[dict], list]:
    """The sampler_pre_cfg_function of APG (Sadat et al. 2024, "Eliminating Oversaturation and
    Artifacts of High Guidance Scales in Diffusion Models"): the guidance cond - uncond, averaged
    over steps by ``momentum``, clipped to norm ``norm_threshold``, its part parallel to cond
    scaled by ``eta``; returned as a positive prediction that the plain cfg formula turns into
    uncond + that guidance * cfg. The running average restarts when sigma rises (a new run)."""
    state = {"avg": None, "sigma": None}

    def fn(args: dict) -> list:
        out = args["conds_out"]
        if len(out) == 1:
            return out
        cond, uncond, cond_scale = out[0], out[1], args["cond_scale"]
        sigma = args["sigma"][0]
        if state["sigma"] is not None and sigma > state["sigma"]:
            state["avg"] = None
        state["sigma"] = sigma
        guidance = cond - uncond
        if momentum != 0:
            state["avg"] = guidance if state["avg"] is None else momentum * state["avg"] + guidance
            guidance = state["avg"]
        if norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
        unit = torch.nn.functional.normalize(cond, dim=[-1, -2, -3])
        parallel = (guidance * unit).sum(dim=[-1, -2, -3], keepdim=True) * unit
        modified = (guidance - parallel) + eta * parallel
        return [(uncond + modified) + (cond - uncond) / cond_scale, uncond] + list(out[2:])

    return fn


@node(category="sampling/custom_sampling", display_name="Adaptive Projected Guidance", outputs=[MODEL],
      python_module="comfy_extras.nodes_apg")
def APG(
    model: Annotated[SDModel, MODEL],
    eta: Annotated[float, Float(1.0, min=-10.0, max=10.0, step=0.01, tooltip=(
        "Controls the scale of the parallel guidance vector. Default CFG behavior at a setting of 1."))],
    norm_threshold: Annotated[float, Float(5.0, min=0.0, max=50.0, step=0.1, tooltip=(
        "Normalize guidance vector to this value, normalization disable at a setting of 0."))],
    momentum: Annotated[float, Float(0.0, min=-5.0, max=1.0, step=0.01, tooltip=(
        "Controls a running average of guidance during diffusion, disabled at a setting of 0."))],
) -> SDModel:
    """Adaptive projected guidance: high cfg without oversaturation."""
    m = model.clone()
    m.set_model_sampler_pre_cfg_function(apg_function(eta, norm_threshold, momentum))
    return m


# -- inpainting -------------------------------------------------------------------------------

def differential_mask(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict,
                      strength: float = 1.0) -> torch.Tensor:
    """The denoise_mask_function of DifferentialDiffusion (Levin & Fried 2023, "Differential
    Diffusion"): at each step regenerate only where the mask is at least the fraction of the
    run's timesteps still ahead, so a soft mask becomes a per-pixel amount of change."""
    model, sigmas = extra_options.get("model"), extra_options.get("sigmas")
    if getattr(model, "schedule", None) is None or sigmas is None:
        raise ValueError("DifferentialDiffusion: the sampler must pass the model and the run's sigmas "
                         "(extra_options 'model' and 'sigmas'); call ksampler.sample with model=")
    schedule = model.schedule
    sigma_to = schedule.sigma_min
    if sigmas[-1] > sigma_to:
        sigma_to = sigmas[-1]
    ts_from, ts_to = schedule.timestep(sigmas[0]), schedule.timestep(sigma_to)
    threshold = (schedule.timestep(sigma[0]) - ts_to) / (ts_from - ts_to)
    binary = (denoise_mask >= threshold.to(denoise_mask.device)).to(denoise_mask.dtype)
    # as ComfyUI: a strength of 0 counts as unset (the binary mask), not as "no effect"
    if strength and strength < 1:
        return strength * binary + (1 - strength) * denoise_mask
    return binary


@node(category="_for_testing", display_name="Differential Diffusion", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_differential_diffusion")
def DifferentialDiffusion(
    model: Annotated[SDModel, MODEL],
    strength: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01, optional=True)] = 1.0,
) -> SDModel:
    """Inpaints with a soft mask: each pixel changes in proportion to its mask value."""
    m = model.clone()
    m.set_model_denoise_mask_function(
        lambda sigma, denoise_mask, extra_options: differential_mask(sigma, denoise_mask, extra_options, strength))
    return m


# -- TorchCompileModel (ComfyUI's, experimental) ------------------------------------------------

@node(category="_for_testing", outputs=[MODEL], experimental=True)
def TorchCompileModel(model: Annotated[SDModel, MODEL],
                      backend: Annotated[str, Combo(["inductor", "cudagraphs"])]) -> SDModel:
    """The model with its whole UNet run through torch.compile at sampling time (compiled once
    per backend and input shape); the input model stays uncompiled. ``cudagraphs`` needs a CUDA
    device. For a whole run, ``latentgraph run --compile`` does the same per block."""
    if backend == "cudagraphs" and model.placement.device.type != "cuda":
        raise ValueError(f"backend 'cudagraphs' needs a CUDA device; this model runs on {model.placement.device}")
    m = model.clone()
    m.model_options["torch_compile"] = backend
    return m
