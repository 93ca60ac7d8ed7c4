"""ComfyUI's custom-sampling nodes: SamplerCustomAdvanced and the NOISE, GUIDER, SAMPLER and
SIGMAS values it takes apart.

The values mirror ComfyUI's objects where that costs nothing, because custom-node packs use
them: a NOISE has ``seed`` and ``generate_noise(latent_dict)``; a GUIDER has ``model_patcher``,
``model_options``, ``conds``, ``cfg``, ``set_conds``, ``set_cfg`` and ``sample(...)``; a SAMPLER
is a sampler name (KSamplerSelect) or a ``SamplerChoice`` (name + options); SIGMAS is a 1-D
float tensor.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import CONDITIONING, LATENT, MODEL, Boolean, Combo, Float, Int, NodeContext, Output, Socket, node
CFGDenoiser = lazy("..sampling.guidance", "CFGDenoiser")
Cond = lazy("..sampling.guidance", "Cond")
add_opposite_areas = lazy("..sampling.guidance", "add_opposite_areas")
calc_cond_batch = lazy("..sampling.guidance", "calc_cond_batch")
cfg_function = lazy("..sampling.guidance", "cfg_function")
opposite_areas = lazy("..sampling.multi_guidance", "opposite_areas")
perp_neg = lazy("..sampling.multi_guidance", "perp_neg")
sample_euler_pp = lazy("..sampling.euler_pp", "sample_euler_pp")
sample_lcm_upscale = lazy("..sampling.lcm_upscale", "sample_lcm_upscale")
SamplerChoice = lazy("..sampling.ksampler", "SamplerChoice")
sample = lazy("..sampling.ksampler", "sample")
beta_scheduler = lazy("..sampling.schedulers", "beta_scheduler")
exponential_sigmas = lazy("..sampling.schedulers", "exponential_sigmas")
AYS_NOISE_LEVELS = lazy("..sampling.sigma_lists", "AYS_NOISE_LEVELS")
denoised_tail = lazy("..sampling.sigma_lists", "denoised_tail")
extend_sigmas = lazy("..sampling.sigma_lists", "extend_sigmas")
flip_sigmas = lazy("..sampling.sigma_lists", "flip_sigmas")
gits_sigmas = lazy("..sampling.sigma_lists", "gits_sigmas")
laplace_sigmas = lazy("..sampling.sigma_lists", "laplace_sigmas")
polyexponential_sigmas = lazy("..sampling.sigma_lists", "polyexponential_sigmas")
split_sigmas_denoise = lazy("..sampling.sigma_lists", "split_sigmas_denoise")
vp_sigmas = lazy("..sampling.sigma_lists", "vp_sigmas")
prepare_noise = lazy("..sampling.noise", "prepare_noise")
from .budget import check_tensor
from .choices import AYS_MODEL_TYPES, SPACING_NAMES
from .latent import upscale_latent
from .preview import previewer
from .sampling import SAMPLER, SIGMAS, check_noise_mask
from .sd import SDModel, inpaint_concat, to_conds

NOISE = Socket("NOISE")
GUIDER = Socket("GUIDER")
_CFG = Float(8.0, min=0.0, max=100.0, step=0.1, round=0.01)
_SEED = Int(0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True)
MODULE = "comfy_extras.nodes_custom_sampler"


class RandomNoiseSource:
    """NOISE from a seed: exactly KSampler's initial noise for that seed (batch_index aware)."""

    def __init__(self, seed: int):
        self.seed = seed

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        return prepare_noise(input_latent["samples"], self.seed, input_latent.get("batch_index"))


class DisabledNoise:
    """NOISE of zeros (sample from the latent as it is); its seed, 0, seeds the sampler's own noise."""

    seed = 0

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, device="cpu")


class Guider:
    """GUIDER with ComfyUI's CFGGuider semantics: a model, named conditionings and a cfg scale;
    ``denoiser`` turns the conditionings (resolved for one latent) into the guided denoiser.
    Subclasses change ``set_conds``/``set_cfg`` and ``denoiser`` (DualCFG, PerpNeg)."""

    # conditionings encoded as a negative prompt (ComfyUI's prompt_type "negative")
    negative_keys = frozenset({"negative"})

    def __init__(self, model_patcher: SDModel):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.conds: dict[str, list] = {}
        self.cfg = 1.0

    def set_conds(self, positive: list, negative: list) -> None:
        self.conds = {"positive": positive, "negative": negative}

    def set_cfg(self, cfg: float) -> None:
        self.cfg = cfg

    def denoiser(self, conds: dict[str, list[Cond]], options: dict) -> Callable:
        pos, neg = add_opposite_areas(conds["positive"], conds.get("negative", []))
        model = self.model_patcher
        return CFGDenoiser(model.apply_model, pos, neg, self.cfg, options, model)

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler: Any, sigmas: torch.Tensor,
               denoise_mask: torch.Tensor | None = None, callback: Callable | None = None,
               disable_pbar: bool = False, seed: int | None = None) -> torch.Tensor:
        """Sample ``latent_image`` (B, C, h, w) from ``noise`` down ``sigmas``; returns the
        output samples on the CPU. ``callback(step, denoised, x, total_steps)`` after each step:
        ComfyUI's order, because packs call a GUIDER's sample with their own callbacks."""
        model = self.model_patcher
        step = None if callback is None else (lambda i, total, denoised, x: callback(i, denoised, x, total))
        device = model.placement.device
        seed = 0 if seed is None else seed
        latent_dev = latent_image.to(device, torch.float32)
        concat = inpaint_concat(model, latent_dev, denoise_mask.to(device) if denoise_mask is not None else None)
        conds = {key: to_conds(model, value, latent_image.shape, "negative" if key in self.negative_keys
                               else "positive", device, concat, seed)
                 for key, value in self.conds.items()}
        with model.placement.use(model.unet):
            out = sample(model.apply_model, model.schedule, sampler, sigmas, noise.to(device), latent_dev, [], [],
                         self.cfg, seed, model.latent_format, denoise_mask, step, model.model_options, model,
                         guide=lambda options: self.denoiser(conds, options))
        return out.cpu()


class BasicGuiderValue(Guider):
    """One conditioning, no guidance (ComfyUI's Guider_Basic: cfg 1, no negative)."""

    def set_conds(self, positive: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive}


class DualCFGGuiderValue(Guider):
    """Two conditionings and a negative, each difference with its own scale (DualCFGGuider)."""

    negative_keys = frozenset({"negative", "middle"})

    def set_conds(self, positive: list, middle: list, negative: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive, "middle": middle, "negative": negative}

    def set_cfg(self, cfg1: float, cfg2: float, nested: bool = False) -> None:  # type: ignore[override]
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def denoiser(self, conds: dict[str, list[Cond]], run_options: dict) -> Callable:
        model = self.model_patcher
        conds = opposite_areas(conds)
        pos, mid, neg = conds["positive"], conds["middle"], conds["negative"]

        def guided(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
            # a sampler's own options for this call (the cfg_pp samplers'), else the run's
            options = run_options if model_options is None else model_options
            if self.nested:  # cfg1 between cond1 and cond2, then cfg2 against the negative
                out = calc_cond_batch(model.apply_model, [neg, mid, pos], x, sigma, options, model)
                text = cfg_function(model, out[2], out[1], self.cfg1, x, sigma, options, pos, mid)
                return out[0] + self.cfg2 * (text - out[0])
            negative, middle = neg, mid
            if not options.get("disable_cfg1_optimization", False) and math.isclose(self.cfg2, 1.0):
                negative = None  # a scale of 1 does not need the prediction it scales against
                if math.isclose(self.cfg1, 1.0):
                    middle = None
            out = calc_cond_batch(model.apply_model, [negative, middle, pos], x, sigma, options, model)
            base = cfg_function(model, out[1], out[0], self.cfg2, x, sigma, options, middle, negative)
            return base + (out[2] - out[1]) * self.cfg1

        return guided


class PerpNegGuiderValue(Guider):
    """Positive, negative and empty conditionings with Perp-Neg guidance (PerpNegGuider)."""

    negative_keys = frozenset({"negative", "empty_negative_prompt"})

    def set_conds(self, positive: list, negative: list, empty_negative_prompt: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive, "empty_negative_prompt": empty_negative_prompt, "negative": negative}

    def set_cfg(self, cfg: float, neg_scale: float) -> None:  # type: ignore[override]
        self.cfg, self.neg_scale = cfg, neg_scale

    def denoiser(self, conds: dict[str, list[Cond]], run_options: dict) -> Callable:
        model = self.model_patcher
        conds = opposite_areas(conds)

        def guided(x: torch.Tensor, sigma: torch.Tensor, model_options: dict | None = None, **_) -> torch.Tensor:
            # a sampler's own options for this call (the cfg_pp samplers'), else the run's
            options = run_options if model_options is None else model_options
            pos, neg, empty = conds["positive"], conds["negative"], conds["empty_negative_prompt"]
            if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
                neg = None
                if math.isclose(self.cfg, 1.0):
                    empty = None
            prompts = [pos, neg, empty]
            out = calc_cond_batch(model.apply_model, prompts, x, sigma, options, model)
            # one batch for the three predictions, so the cfg hooks are called here as cfg_function would
            for fn in options.get("sampler_pre_cfg_function", ()):
                out = fn({"conds": prompts, "conds_out": out, "cond_scale": self.cfg, "timestep": sigma, "input": x,
                          "sigma": sigma, "model": model, "model_options": options})
            result = perp_neg(out[0], out[1], out[2], self.neg_scale, self.cfg)
            for fn in options.get("sampler_post_cfg_function", ()):
                result = fn({"denoised": result, "cond": pos, "uncond": neg, "cond_scale": self.cfg, "model": model,
                             "uncond_denoised": out[1], "cond_denoised": out[0], "sigma": sigma,
                             "model_options": options, "input": x, "empty_cond": empty,
                             "empty_cond_denoised": out[2]})
            return result

        return guided


@node(category="sampling/custom_sampling/noise", display_name="RandomNoise", outputs=[NOISE], python_module=MODULE)
def RandomNoise(noise_seed: Annotated[int, _SEED]) -> RandomNoiseSource:
    """Seeded initial noise, the same as KSampler's for that seed."""
    return RandomNoiseSource(noise_seed)


@node(category="sampling/custom_sampling/noise", display_name="DisableNoise", outputs=[NOISE], python_module=MODULE)
def DisableNoise() -> DisabledNoise:
    """No initial noise (zeros): for a latent that already holds its noise."""
    return DisabledNoise()


@node(category="sampling/custom_sampling/guiders", display_name="BasicGuider", outputs=[GUIDER], python_module=MODULE)
def BasicGuider(model: Annotated[SDModel, MODEL], conditioning: Annotated[list, CONDITIONING]) -> Guider:
    """Denoise towards one conditioning, without classifier-free guidance (for distilled models)."""
    guider = BasicGuiderValue(model)
    guider.set_conds(conditioning)
    return guider


@node(category="sampling/custom_sampling/guiders", display_name="CFGGuider", outputs=[GUIDER], python_module=MODULE)
def CFGGuider(model: Annotated[SDModel, MODEL], positive: Annotated[list, CONDITIONING],
              negative: Annotated[list, CONDITIONING], cfg: Annotated[float, _CFG]) -> Guider:
    """Classifier-free guidance between a positive and a negative conditioning (as KSampler)."""
    guider = Guider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


@node(category="sampling/custom_sampling/guiders", display_name="DualCFGGuider", outputs=[GUIDER],
      python_module=MODULE)
def DualCFGGuider(
    model: Annotated[SDModel, MODEL],
    cond1: Annotated[list, CONDITIONING],
    cond2: Annotated[list, CONDITIONING],
    negative: Annotated[list, CONDITIONING],
    cfg_conds: Annotated[float, _CFG],
    cfg_cond2_negative: Annotated[float, _CFG],
    style: Annotated[str, Combo(["regular", "nested"])],
) -> Guider:
    """Guidance from cond2 over the negative (cfg_cond2_negative) plus cond1 over cond2 (cfg_conds);
    nested: cond1 over cond2 first, then that over the negative."""
    guider = DualCFGGuiderValue(model)
    guider.set_conds(cond1, cond2, negative)
    guider.set_cfg(cfg_conds, cfg_cond2_negative, style == "nested")
    return guider


@node(category="_for_testing", display_name="PerpNegGuider", outputs=[GUIDER], experimental=True,
      python_module="comfy_extras.nodes_perpneg")
def PerpNegGuider(
    model: Annotated[SDModel, MODEL],
    positive: Annotated[list, CONDITIONING],
    negative: Annotated[list, CONDITIONING],
    empty_conditioning: Annotated[list, CONDITIONING],
    cfg: Annotated[float, _CFG],
    neg_scale: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01)],
) -> Guider:
    """Perp-Neg guidance: the negative prompt only removes what is not along the positive one."""
    guider = PerpNegGuiderValue(model)
    guider.set_conds(positive, negative, empty_conditioning)
    guider.set_cfg(cfg, neg_scale)
    return guider


@node(category="sampling/custom_sampling", display_name="SamplerCustomAdvanced",
      outputs=[Output("LATENT", "output"), Output("LATENT", "denoised_output")], python_module=MODULE)
def SamplerCustomAdvanced(
    noise: Annotated[Any, NOISE],
    guider: Annotated[Any, GUIDER],
    sampler: Annotated[Any, SAMPLER],
    sigmas: Annotated[Tensor, SIGMAS],
    latent_image: Annotated[dict, LATENT],
    ctx: NodeContext,
) -> tuple:
    """Samples with a noise source, a guider, a sampler and a sigma schedule chosen by other nodes."""
    samples = latent_image["samples"]
    mask = latent_image.get("noise_mask")
    check_noise_mask(samples, mask)
    model = guider.model_patcher
    preview = previewer(ctx, model)  # None: the run asked for no previews
    last = {}

    def step(i: int, denoised: torch.Tensor, x: torch.Tensor, total: int) -> None:  # a GUIDER's callback
        last["denoised"] = denoised
        ctx.progress(i + 1, total, preview=None if preview is None else lambda: preview(denoised))

    out = guider.sample(noise.generate_noise(latent_image), samples, sampler, sigmas, mask, step, seed=noise.seed)
    result = dict(latent_image)
    result["samples"] = out
    denoised = dict(result)
    if "denoised" in last:
        denoised["samples"] = model.latent_format.process_out(last["denoised"].float().cpu())
    return result, denoised


@node(category="_for_testing/custom_sampling/noise", display_name="AddNoise", outputs=[LATENT], python_module=MODULE)
def AddNoise(model: Annotated[SDModel, MODEL], noise: Annotated[Any, NOISE], sigmas: Annotated[Tensor, SIGMAS],
             latent_image: Annotated[dict, LATENT]) -> dict:
    """Adds the noise of a schedule's span (first sigma minus last) to a latent, without sampling."""
    if len(sigmas) == 0:
        return latent_image
    samples = latent_image["samples"]
    fresh = noise.generate_noise(latent_image)
    scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
    fmt = model.latent_format
    scaled_in = fmt.process_in(samples) if torch.count_nonzero(samples) > 0 else samples  # empty stays 0
    noisy = fmt.process_out(model.schedule.noise_scaling(scale, fresh, scaled_in.float(), False))
    out = dict(latent_image)
    out["samples"] = torch.nan_to_num(noisy, nan=0.0, posinf=0.0, neginf=0.0)
    return out


_STEPS = Int(20, min=1, max=10000)
_SIG_MAX = Float(14.614642, min=0.0, max=5000.0, step=0.01, round=False)
_SIG_MIN = Float(0.0291675, min=0.0, max=5000.0, step=0.01, round=False)
_SCHEDULERS = "sampling/custom_sampling/schedulers"
_SIGMA_EDITS = "sampling/custom_sampling/sigmas"


@node(category=_SCHEDULERS, display_name="ExponentialScheduler", outputs=[SIGMAS], python_module=MODULE)
def ExponentialScheduler(steps: Annotated[int, _STEPS], sigma_max: Annotated[float, _SIG_MAX],
                         sigma_min: Annotated[float, _SIG_MIN]) -> Tensor:
    """Sigmas evenly spaced in log sigma from sigma_max to sigma_min, then 0."""
    check_sigma_range("ExponentialScheduler", sigma_min, sigma_max)
    return exponential_sigmas(steps, sigma_min, sigma_max)


@node(category=_SCHEDULERS, display_name="PolyexponentialScheduler", outputs=[SIGMAS], python_module=MODULE)
def PolyexponentialScheduler(steps: Annotated[int, _STEPS], sigma_max: Annotated[float, _SIG_MAX],
                             sigma_min: Annotated[float, _SIG_MIN],
                             rho: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01, round=False)]
                             ) -> Tensor:
    """Log sigma along a power rho of a ramp from sigma_max to sigma_min, then 0."""
    check_sigma_range("PolyexponentialScheduler", sigma_min, sigma_max)
    return polyexponential_sigmas(steps, sigma_min, sigma_max, rho)


@node(category=_SCHEDULERS, display_name="VPScheduler", outputs=[SIGMAS], python_module=MODULE)
def VPScheduler(steps: Annotated[int, _STEPS],
                beta_d: Annotated[float, Float(19.9, min=0.0, max=5000.0, step=0.01, round=False)],
                beta_min: Annotated[float, Float(0.1, min=0.0, max=5000.0, step=0.01, round=False)],
                eps_s: Annotated[float, Float(0.001, min=0.0, max=1.0, step=0.0001, round=False)]) -> Tensor:
    """The variance-preserving SDE's sigmas from t = 1 to t = eps_s, then 0."""
    return vp_sigmas(steps, beta_d, beta_min, eps_s)


@node(category=_SCHEDULERS, display_name="BetaSamplingScheduler", outputs=[SIGMAS], python_module=MODULE)
def BetaSamplingScheduler(model: Annotated[SDModel, MODEL], steps: Annotated[int, _STEPS],
                          alpha: Annotated[float, Float(0.6, min=0.0, max=50.0, step=0.01, round=False)],
                          beta: Annotated[float, Float(0.6, min=0.0, max=50.0, step=0.01, round=False)]
                          ) -> Tensor:
    """The model's timesteps at the quantiles of a Beta(alpha, beta) distribution."""
    return beta_scheduler(model.schedule, steps, alpha, beta)


@node(category=_SCHEDULERS, display_name="LaplaceScheduler", outputs=[SIGMAS], python_module=MODULE)
def LaplaceScheduler(steps: Annotated[int, _STEPS], sigma_max: Annotated[float, _SIG_MAX],
                     sigma_min: Annotated[float, _SIG_MIN],
                     mu: Annotated[float, Float(0.0, min=-10.0, max=10.0, step=0.1, round=False)],
                     beta: Annotated[float, Float(0.5, min=0.0, max=10.0, step=0.1, round=False)]) -> Tensor:
    """Log sigma at the quantiles of a Laplace(mu, beta) distribution; no trailing 0 (as ComfyUI)."""
    check_sigma_range("LaplaceScheduler", sigma_min, sigma_max)
    return laplace_sigmas(steps, sigma_min, sigma_max, mu, beta)


@node(category=_SCHEDULERS, display_name="AlignYourStepsScheduler", outputs=[SIGMAS],
      python_module="comfy_extras.nodes_align_your_steps")
def AlignYourStepsScheduler(model_type: Annotated[str, Combo(AYS_MODEL_TYPES)],
                            steps: Annotated[int, Int(10, min=1, max=10000)],
                            denoise: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)]) -> Tensor:
    """NVIDIA's Align Your Steps schedule for the model family, resampled to the step count."""
    return denoised_tail(AYS_NOISE_LEVELS[model_type], steps, denoise)


@node(category=_SCHEDULERS, display_name="GITSScheduler", outputs=[SIGMAS], python_module="comfy_extras.nodes_gits")
def GITSScheduler(coeff: Annotated[float, Float(1.2, min=0.8, max=1.5, step=0.05)],
                  steps: Annotated[int, Int(10, min=2, max=1000)],
                  denoise: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)]) -> Tensor:
    """GITS' optimised SD1 schedule (Chen et al. 2024) for a coefficient from 0.80 to 1.50 in steps of 0.05."""
    return gits_sigmas(coeff, steps, denoise)


@node(category=_SIGMA_EDITS, display_name="FlipSigmas", outputs=[SIGMAS], python_module=MODULE)
def FlipSigmas(sigmas: Annotated[Tensor, SIGMAS]) -> Tensor:
    """The schedule reversed, from low noise to high (to unsample an image back to noise)."""
    return flip_sigmas(sigmas)


@node(category=_SIGMA_EDITS, display_name="SetFirstSigma", outputs=[SIGMAS], python_module=MODULE)
def SetFirstSigma(sigmas: Annotated[Tensor, SIGMAS],
                  sigma: Annotated[float, Float(136.0, min=0.0, max=20000.0, step=0.001, round=False)]
                  ) -> Tensor:
    """The schedule with its first sigma replaced."""
    if len(sigmas) == 0:
        raise ValueError("SetFirstSigma: input 'sigmas' is empty: there is no first sigma to set")
    sigmas = sigmas.clone()
    sigmas[0] = sigma
    return sigmas


@node(category=_SIGMA_EDITS, display_name="ExtendIntermediateSigmas", outputs=[SIGMAS], python_module=MODULE)
def ExtendIntermediateSigmas(
    sigmas: Annotated[Tensor, SIGMAS],
    steps: Annotated[int, Int(2, min=1, max=100)],
    start_at_sigma: Annotated[float, Float(-1.0, min=-1.0, max=20000.0, step=0.01, round=False)],
    end_at_sigma: Annotated[float, Float(12.0, min=0.0, max=20000.0, step=0.01, round=False)],
    spacing: Annotated[str, Combo(SPACING_NAMES)],
) -> Tensor:
    """Splits each step whose sigma lies between end_at_sigma and start_at_sigma (-1: no limit)
    into `steps` smaller steps."""
    return extend_sigmas(sigmas, steps, start_at_sigma, end_at_sigma, spacing)


@node(category=_SIGMA_EDITS, display_name="SplitSigmasDenoise",
      outputs=[Output("SIGMAS", "high_sigmas"), Output("SIGMAS", "low_sigmas")], python_module=MODULE)
def SplitSigmasDenoise(sigmas: Annotated[Tensor, SIGMAS],
                       denoise: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01)]) -> tuple:
    """Splits a schedule so that the low part holds the last `denoise` fraction of its steps."""
    return split_sigmas_denoise(sigmas, denoise)


@node(category=_SIGMA_EDITS, display_name="SamplingPercentToSigma", outputs=[Output("FLOAT", "sigma_value")],
      python_module=MODULE)
def SamplingPercentToSigma(
    model: Annotated[SDModel, MODEL],
    sampling_percent: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.0001)],
    return_actual_sigma: Annotated[bool, Boolean(False, tooltip=(
        "Return the actual sigma value instead of the value used for interval checks.\n"
        "This only affects results at 0.0 and 1.0."))],
) -> float:
    """The model's sigma at a fraction of sampling (0 = start), as start/end_percent inputs use it."""
    schedule = model.schedule
    if return_actual_sigma and sampling_percent == 0.0:
        return float(schedule.sigma_max)
    if return_actual_sigma and sampling_percent == 1.0:
        return float(schedule.sigma_min)
    return float(schedule.percent_to_sigma(sampling_percent))


def check_sigma_range(node_name: str, sigma_min: float, sigma_max: float) -> None:
    """Refuse a log-spaced range with a zero end (log(0)): ComfyUI fails there with a bare math error."""
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if value <= 0:
            raise ValueError(f"{node_name}: input {name!r} must be above 0 for a log-spaced schedule, got {value}")


_ETA = Float(1.0, min=0.0, max=100.0, step=0.01, round=False)
_S_NOISE = Float(1.0, min=0.0, max=100.0, step=0.01, round=False)
_NOISE_DEVICE = Combo(["gpu", "cpu"])
_SAMPLERS = "sampling/custom_sampling/samplers"


def _sde(name: str, noise_device: str, **options) -> SamplerChoice:
    # ComfyUI's "gpu" picks the *_gpu registry entry (the Brownian tree on the latent's device)
    return SamplerChoice(name if noise_device == "cpu" else f"{name}_gpu", options)


@node(category=_SAMPLERS, display_name="SamplerEulerAncestral", outputs=[SAMPLER], python_module=MODULE)
def SamplerEulerAncestral(eta: Annotated[float, _ETA], s_noise: Annotated[float, _S_NOISE]) -> SamplerChoice:
    """euler_ancestral with its noise amount (eta) and noise scale (s_noise)."""
    return SamplerChoice("euler_ancestral", {"eta": eta, "s_noise": s_noise})


@node(category=_SAMPLERS, display_name="SamplerDPMPP_2S_Ancestral", outputs=[SAMPLER], python_module=MODULE)
def SamplerDPMPP_2S_Ancestral(eta: Annotated[float, _ETA], s_noise: Annotated[float, _S_NOISE]) -> SamplerChoice:
    """dpmpp_2s_ancestral with its eta and s_noise."""
    return SamplerChoice("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise})


@node(category=_SAMPLERS, display_name="SamplerDPMPP_2M_SDE", outputs=[SAMPLER], python_module=MODULE)
def SamplerDPMPP_2M_SDE(solver_type: Annotated[str, Combo(["midpoint", "heun"])], eta: Annotated[float, _ETA],
                        s_noise: Annotated[float, _S_NOISE], noise_device: Annotated[str, _NOISE_DEVICE]
                        ) -> SamplerChoice:
    """dpmpp_2m_sde with its solver type, eta, s_noise and noise device."""
    return _sde("dpmpp_2m_sde", noise_device, eta=eta, s_noise=s_noise, solver_type=solver_type)


@node(category=_SAMPLERS, display_name="SamplerDPMPP_3M_SDE", outputs=[SAMPLER], python_module=MODULE)
def SamplerDPMPP_3M_SDE(eta: Annotated[float, _ETA], s_noise: Annotated[float, _S_NOISE],
                        noise_device: Annotated[str, _NOISE_DEVICE]) -> SamplerChoice:
    """dpmpp_3m_sde with its eta, s_noise and noise device."""
    return _sde("dpmpp_3m_sde", noise_device, eta=eta, s_noise=s_noise)


@node(category=_SAMPLERS, display_name="SamplerDPMPP_SDE", outputs=[SAMPLER], python_module=MODULE)
def SamplerDPMPP_SDE(eta: Annotated[float, _ETA], s_noise: Annotated[float, _S_NOISE],
                     r: Annotated[float, Float(0.5, min=0.0, max=100.0, step=0.01, round=False)],
                     noise_device: Annotated[str, _NOISE_DEVICE]) -> SamplerChoice:
    """dpmpp_sde with its eta, s_noise, stage ratio r and noise device."""
    return _sde("dpmpp_sde", noise_device, eta=eta, s_noise=s_noise, r=r)


@node(category=_SAMPLERS, display_name="SamplerLMS", outputs=[SAMPLER], python_module=MODULE)
def SamplerLMS(order: Annotated[int, Int(4, min=1, max=100)]) -> SamplerChoice:
    """lms with its order (how many past derivatives each step uses)."""
    return SamplerChoice("lms", {"order": order})


_POS100 = dict(min=0.0, max=100.0, step=0.01, round=False)


@node(category=_SAMPLERS, display_name="SamplerDPMAdaptative", outputs=[SAMPLER], python_module=MODULE)
def SamplerDPMAdaptative(
    order: Annotated[int, Int(3, min=2, max=3)],
    rtol: Annotated[float, Float(0.05, **_POS100)],
    atol: Annotated[float, Float(0.0078, **_POS100)],
    h_init: Annotated[float, Float(0.05, **_POS100)],
    pcoeff: Annotated[float, Float(0.0, **_POS100)],
    icoeff: Annotated[float, Float(1.0, **_POS100)],
    dcoeff: Annotated[float, Float(0.0, **_POS100)],
    accept_safety: Annotated[float, Float(0.81, **_POS100)],
    eta: Annotated[float, Float(0.0, **_POS100)],
    s_noise: Annotated[float, Float(1.0, **_POS100)],
) -> SamplerChoice:
    """dpm_adaptive with its order, tolerances and step-size controller."""
    return SamplerChoice("dpm_adaptive", dict(order=order, rtol=rtol, atol=atol, h_init=h_init, pcoeff=pcoeff,
                                              icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta,
                                              s_noise=s_noise))


@node(category=_SAMPLERS, display_name="SamplerEulerAncestralCFG++", outputs=[SAMPLER], python_module=MODULE)
def SamplerEulerAncestralCFGPP(eta: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.01, round=False)],
                               s_noise: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01, round=False)]
                               ) -> SamplerChoice:
    """euler_ancestral_cfg_pp (CFG++) with its eta and s_noise."""
    return SamplerChoice("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise})


def reverse_time_sde_scaler(eta: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """ER-SDE's noise scaler for the reverse-time SDE of stochastic strength eta: x^(eta + 1)."""
    def scale(x: torch.Tensor) -> torch.Tensor:
        return x ** (eta + 1)
    return scale


@node(category=_SAMPLERS, display_name="SamplerER_SDE", outputs=[SAMPLER], python_module=MODULE)
def SamplerER_SDE(
    solver_type: Annotated[str, Combo(["ER-SDE", "Reverse-time SDE", "ODE"])],
    max_stage: Annotated[int, Int(3, min=1, max=3)],
    eta: Annotated[float, Float(1.0, min=0.0, max=100.0, step=0.01, round=False, tooltip=(
        "Stochastic strength of reverse-time SDE.\nWhen eta=0, it reduces to deterministic ODE. "
        "This setting doesn't apply to ER-SDE solver type."))],
    s_noise: Annotated[float, _S_NOISE],
) -> SamplerChoice:
    """er_sde as the ER-SDE solver (its own noise scaler), a reverse-time SDE of strength eta, or an ODE."""
    if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
        eta, s_noise = 0.0, 0.0  # no noise at all: the ODE
    scaler = None if solver_type == "ER-SDE" else reverse_time_sde_scaler(eta)
    return SamplerChoice("er_sde", {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage})


def tau_interval(start_sigma: float, end_sigma: float, eta: float) -> Callable[[Any], float]:
    """SA-Solver's stochasticity: eta for sigmas within [end_sigma, start_sigma], else 0 (an ODE step)."""
    def tau(sigma) -> float:
        if eta <= 0:
            return 0.0
        s = float(sigma)
        return eta if start_sigma >= s >= end_sigma else 0.0
    return tau


@node(category=_SAMPLERS, display_name="SamplerSASolver", outputs=[SAMPLER], python_module=MODULE)
def SamplerSASolver(
    model: Annotated[SDModel, MODEL],
    eta: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.01, round=False)],
    sde_start_percent: Annotated[float, Float(0.2, min=0.0, max=1.0, step=0.001)],
    sde_end_percent: Annotated[float, Float(0.8, min=0.0, max=1.0, step=0.001)],
    s_noise: Annotated[float, _S_NOISE],
    predictor_order: Annotated[int, Int(3, min=1, max=6)],
    corrector_order: Annotated[int, Int(4, min=0, max=6)],
    use_pece: Annotated[bool, Boolean()],
    simple_order_2: Annotated[bool, Boolean()],
) -> SamplerChoice:
    """sa_solver, stochastic (eta) between two fractions of sampling, with its predictor/corrector orders."""
    start = model.schedule.percent_to_sigma(sde_start_percent)
    end = model.schedule.percent_to_sigma(sde_end_percent)
    return SamplerChoice("sa_solver", {"tau_func": tau_interval(start, end, eta), "s_noise": s_noise,
                                       "predictor_order": predictor_order, "corrector_order": corrector_order,
                                       "use_pece": use_pece, "simple_order_2": simple_order_2})


@node(category="_for_testing", display_name="SamplerEulerCFG++", outputs=[SAMPLER], experimental=True,
      python_module="comfy_extras.nodes_advanced_samplers")
def SamplerEulerCFGpp(version: Annotated[str, Combo(["regular", "alternative"])]) -> SamplerChoice:
    """Euler CFG++: "regular" is the euler_cfg_pp sampler; "alternative" adds the unconditional
    prediction to the step's noise direction instead."""
    if version == "alternative":
        return SamplerChoice("euler_pp", {}, sample_euler_pp)
    return SamplerChoice("euler_cfg_pp")


@node(category="sampling/custom_sampling/samplers", outputs=[SAMPLER], python_module="comfy_extras.nodes_advanced_samplers")
def SamplerLCMUpscale(scale_ratio: Annotated[float, Float(1.0, min=0.1, max=20.0, step=0.01)],
                      scale_steps: Annotated[int, Int(-1, min=-1, max=1000, step=1)],
                      upscale_method: Annotated[str, Combo(["bislerp", "nearest-exact", "bilinear", "area", "bicubic"])],
                      ) -> SamplerChoice:
    """LCM that resizes the prediction after each of the first scale_steps steps (-1: about half
    of them) until the latent is scale_ratio times its size, with fresh noise at each next sigma."""
    def check(shape: tuple[int, ...]) -> None:  # before the first step: the largest latent it will make
        check_tensor(shape, f"SamplerLCMUpscale's scale_ratio {scale_ratio} (a {shape[-1]}x{shape[-2]} latent)",
                     "a latent")

    options = {"total_upscale": scale_ratio, "upscale_method": upscale_method,
               "upscale_steps": None if scale_steps < 0 else scale_steps, "check_size": check,
               "resize": lambda x, width, height: upscale_latent(x, width, height, upscale_method)}
    return SamplerChoice("lcm_upscale", options, sample_lcm_upscale)
