"""Sampling nodes with ComfyUI's names, inputs and numerics: KSampler, KSamplerAdvanced,
SamplerCustom and its sampler/sigma nodes, and ModelSamplingDiscrete."""

from __future__ import annotations

from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import CONDITIONING, LATENT, MODEL, Boolean, Combo, Float, Int, NodeContext, Output, Socket, node
sample = lazy("..sampling.ksampler", "sample")
trim_sigmas = lazy("..sampling.ksampler", "trim_sigmas")
prepare_noise = lazy("..sampling.noise", "prepare_noise")
LCMSchedule = lazy("..sampling.schedule", "LCMSchedule")
compute_sigmas = lazy("..sampling.schedulers", "compute_sigmas")
karras_sigmas = lazy("..sampling.schedulers", "karras_sigmas")
sd_turbo_sigmas = lazy("..sampling.schedulers", "sd_turbo_sigmas")
from .budget import check_tensor
from .choices import SAMPLER_NAMES, SCHEDULER_NAMES
from .preview import previewer
from .sd import SDModel, inpaint_concat, schedule_for, to_conds

SAMPLER = Socket("SAMPLER")
SIGMAS = Socket("SIGMAS")
SEED = Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
           tooltip="The random seed used for creating the noise.")
Cond = Any


def run(ctx: NodeContext, model: SDModel, seed: int, cfg: float, sampler_name: str, sigmas: torch.Tensor,
        positive: Cond, negative: Cond, latent: dict, add_noise: bool = True) -> tuple[dict, torch.Tensor]:
    """Sample a LATENT dict; returns (output latent, the last denoised prediction)."""
    placement = model.placement
    device = placement.device
    samples = latent["samples"]
    check_noise_mask(samples, latent.get("noise_mask"))
    noise = prepare_noise(samples, seed, latent.get("batch_index")) if add_noise else torch.zeros_like(samples)
    mask = latent.get("noise_mask")
    latent_dev = samples.to(device, torch.float32)
    concat = inpaint_concat(model, latent_dev, mask.to(device) if mask is not None else None)
    pos = to_conds(model, positive, samples.shape, "positive", device, concat, seed)
    neg = to_conds(model, negative, samples.shape, "negative", device, concat, seed)
    preview = previewer(ctx, model)  # None: the run asked for no previews
    last = {}

    def step(i: int, total: int, denoised: torch.Tensor, x: torch.Tensor) -> None:
        last["denoised"] = denoised
        ctx.progress(i + 1, total, preview=None if preview is None else lambda: preview(denoised))

    with placement.use(model.unet):
        out = sample(model.apply_model, model.schedule, sampler_name, sigmas, noise.to(device), latent_dev,
                     pos, neg, cfg, seed, model.latent_format, mask, step, model.model_options, model)
    result = dict(latent)
    result["samples"] = out.cpu()
    denoised = last.get("denoised")
    denoised = model.latent_format.process_out(denoised.float().cpu()) if denoised is not None else result["samples"]
    return result, denoised


def check_noise_mask(samples: torch.Tensor, mask: torch.Tensor | None) -> None:
    """Refuse (tensor_bytes) a noise mask that, resized to the latent and repeated over its
    channels and batch, would be too big (a batch of tiny masks over a large latent)."""
    if mask is None:
        return
    b, c, h, w = samples.shape
    mb = mask.reshape(-1, *mask.shape[-2:]).shape[0]
    check_tensor((max(b, mb), c, h, w), f"a noise_mask batch of {mb} resized to a latent batch of {b} of "
                 f"{w} x {h}", "a noise mask")


_MODEL = MODEL(tooltip="The model used for denoising the input latent.")
_POS = CONDITIONING(tooltip="The conditioning describing the attributes you want to include in the image.")
_NEG = CONDITIONING(tooltip="The conditioning describing the attributes you want to exclude from the image.")
_STEPS = Int(20, min=1, max=10000, tooltip="The number of steps used in the denoising process.")
_CFG = Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01, tooltip="The Classifier-Free Guidance scale.")
_SAMPLER = Combo(SAMPLER_NAMES, default="euler", tooltip="The algorithm used when sampling.")
_SCHEDULER = Combo(SCHEDULER_NAMES, default="simple", tooltip="How the noise is removed step by step.")


@node(category="sampling", display_name="KSampler", outputs=[LATENT])
def KSampler(
    model: Annotated[SDModel, _MODEL],
    seed: Annotated[int, SEED],
    steps: Annotated[int, _STEPS],
    cfg: Annotated[float, _CFG],
    sampler_name: Annotated[str, _SAMPLER],
    scheduler: Annotated[str, _SCHEDULER],
    positive: Annotated[Cond, _POS],
    negative: Annotated[Cond, _NEG],
    latent_image: Annotated[dict, LATENT(tooltip="The latent image to denoise.")],
    denoise: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01, tooltip="The amount of denoising applied.")],
    ctx: NodeContext,
) -> dict:
    """Uses the provided model, positive and negative conditioning to denoise the latent image."""
    sigmas = compute_sigmas(model.schedule, scheduler, steps, denoise, sampler_name)
    return run(ctx, model, seed, cfg, sampler_name, sigmas, positive, negative, latent_image)[0]


@node(category="sampling", display_name="KSampler (Advanced)", outputs=[LATENT])
def KSamplerAdvanced(
    model: Annotated[SDModel, MODEL],
    add_noise: Annotated[str, Combo(["enable", "disable"], default="enable")],
    noise_seed: Annotated[int, Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)],
    steps: Annotated[int, Int(20, min=1, max=10000)],
    cfg: Annotated[float, Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
    sampler_name: Annotated[str, Combo(SAMPLER_NAMES, default="euler")],
    scheduler: Annotated[str, Combo(SCHEDULER_NAMES, default="simple")],
    positive: Annotated[Cond, CONDITIONING],
    negative: Annotated[Cond, CONDITIONING],
    latent_image: Annotated[dict, LATENT],
    start_at_step: Annotated[int, Int(0, min=0, max=10000)],
    end_at_step: Annotated[int, Int(10000, min=0, max=10000)],
    return_with_leftover_noise: Annotated[str, Combo(["disable", "enable"], default="disable")],
    ctx: NodeContext,
) -> dict:
    """Runs steps start_at_step..end_at_step of a schedule, optionally without adding noise
    and keeping the leftover noise (for chaining a base and a refiner)."""
    sigmas = compute_sigmas(model.schedule, scheduler, steps, 1.0, sampler_name)
    sigmas = trim_sigmas(sigmas, start_at_step, end_at_step, return_with_leftover_noise != "enable")
    if sigmas is None:
        return dict(latent_image)
    return run(ctx, model, noise_seed, cfg, sampler_name, sigmas, positive, negative, latent_image,
               add_noise == "enable")[0]


@node(category="sampling/custom_sampling", display_name="SamplerCustom",
      outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")])
def SamplerCustom(
    model: Annotated[SDModel, MODEL],
    add_noise: Annotated[bool, Boolean(True)],
    noise_seed: Annotated[int, Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)],
    cfg: Annotated[float, Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01)],
    positive: Annotated[Cond, CONDITIONING],
    negative: Annotated[Cond, CONDITIONING],
    sampler: Annotated[str, SAMPLER],
    sigmas: Annotated[Tensor, SIGMAS],
    latent_image: Annotated[dict, LATENT],
    ctx: NodeContext,
) -> tuple:
    """Samples with a sampler and a sigma schedule chosen by other nodes."""
    out, denoised = run(ctx, model, noise_seed, cfg, sampler, sigmas, positive, negative, latent_image, add_noise)
    den = dict(out)
    den["samples"] = denoised
    return out, den


@node(category="sampling/custom_sampling/samplers", display_name="KSamplerSelect", outputs=[SAMPLER])
def KSamplerSelect(sampler_name: Annotated[str, Combo(SAMPLER_NAMES, default="euler")]) -> str:
    """Chooses a sampler for SamplerCustom."""
    return sampler_name


@node(category="sampling/custom_sampling/schedulers", display_name="BasicScheduler", outputs=[SIGMAS])
def BasicScheduler(
    model: Annotated[SDModel, MODEL],
    scheduler: Annotated[str, Combo(SCHEDULER_NAMES, default="simple")],
    steps: Annotated[int, Int(20, min=1, max=10000)],
    denoise: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)],
) -> Tensor:
    """A named noise schedule for the model's sampling."""
    # ComfyUI's node keeps the last steps+1 sigmas even at denoise 1, where ddim_uniform makes one
    # more (KSampler runs that extra step; this node drops the first sigma)
    return compute_sigmas(model.schedule, scheduler, steps, denoise)[-(steps + 1):]


@node(category="sampling/custom_sampling/schedulers", display_name="KarrasScheduler", outputs=[SIGMAS])
def KarrasScheduler(
    steps: Annotated[int, Int(20, min=1, max=10000)],
    sigma_max: Annotated[float, Float(14.614642, min=0.0, max=5000.0, step=0.01, round=False)],
    sigma_min: Annotated[float, Float(0.0291675, min=0.0, max=5000.0, step=0.01, round=False)],
    rho: Annotated[float, Float(7.0, min=0.0, max=100.0, step=0.01, round=False)],
) -> Tensor:
    """Karras et al.'s schedule between sigma_max and sigma_min."""
    return karras_sigmas(steps, sigma_min, sigma_max, rho)


@node(category="sampling/custom_sampling/schedulers", display_name="SDTurboScheduler", outputs=[SIGMAS])
def SDTurboScheduler(
    model: Annotated[SDModel, MODEL],
    steps: Annotated[int, Int(1, min=1, max=10)],
    denoise: Annotated[float, Float(1.0, min=0, max=1.0, step=0.01)],
) -> Tensor:
    """SD-Turbo's few-step schedule (timesteps 999, 899, ...)."""
    return sd_turbo_sigmas(model.schedule, steps, denoise)


@node(category="sampling/custom_sampling/sigmas", display_name="SplitSigmas",
      outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")])
def SplitSigmas(sigmas: Annotated[Tensor, SIGMAS],
                step: Annotated[int, Int(0, min=0, max=10000)]) -> tuple:
    """Splits a schedule at a step: the first part ends where the second begins."""
    return sigmas[: step + 1], sigmas[step:]


@node(category="advanced/model", display_name="ModelSamplingDiscrete", outputs=[MODEL],
      python_module="comfy_extras.nodes_model_advanced")
def ModelSamplingDiscrete(
    model: Annotated[SDModel, MODEL],
    sampling: Annotated[str, Combo(["eps", "v_prediction", "lcm", "x0", "img_to_img"], default="eps")],
    zsnr: Annotated[bool, Boolean(False)],
) -> SDModel:
    """Overrides what the model predicts (eps, v, x0; lcm: a latent consistency model's
    distilled 50-step schedule and output) and zero-terminal-SNR."""
    if sampling == "lcm":
        return model.with_schedule(LCMSchedule(zsnr))
    return model.with_schedule(schedule_for(model.arch, {"v_prediction": "v"}.get(sampling, sampling), zsnr))
