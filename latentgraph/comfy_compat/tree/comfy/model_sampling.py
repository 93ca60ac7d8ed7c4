"""ComfyUI's ``comfy.model_sampling``: noise schedules as packs build them (a sigma table class
mixed with a prediction class, ``class MS(ModelSamplingDiscrete, EPS)``), for
``model.add_object_patch("model_sampling", MS(model.model.model_config))``.

A MODEL's own schedule is latentgraph's (sampling/schedule.py); it answers these classes'
isinstance checks by what it is: every SD schedule is an ``EPS`` (v and EDM prediction are
subclasses of it, as in ComfyUI), a ``DiscreteSchedule`` is a ``ModelSamplingDiscrete``, a
``ContinuousSchedule`` a ``ModelSamplingContinuousEDM`` (or ``...V`` with its arctan timing).
Flow-matching schedules (CONST, ModelSamplingDiscreteFlow, Flux) are for model families
latentgraph does not load and are absent.
"""

from __future__ import annotations

import math

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.sampling import schedule as _ours


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class _Kind(type):
    """isinstance(x, C) for the classes below is also true of latentgraph's schedules that
    are what C describes (``_ours_match``); a pack's subclass matches only its own instances."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        match = cls.__dict__.get("_ours_match")
        return match is not None and isinstance(obj, _ours.SigmaTable) and bool(match.__func__(obj))


def reshape_sigma(sigma: torch.Tensor, noise_dim: int) -> torch.Tensor:
    """sigma () or (B,) -> a shape that broadcasts against a (B, ...) tensor."""
    return sigma.view(()) if sigma.nelement() == 1 else sigma.view(sigma.shape[:1] + (1,) * (noise_dim - 1))


def rescale_zero_terminal_snr_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    return _ours.rescale_zero_terminal_snr(sigmas)


def time_snr_shift(alpha: float, t):
    """Shift a flow timestep toward noise by ``alpha`` (the SD3 paper's shift; 1 changes nothing)."""
    if alpha == 1.0:
        return t
    return alpha * t / (1 + (alpha - 1) * t)


# -- what the network predicts ----------------------------------------------------------------
class EPS(metaclass=_Kind):
    """The network predicts the noise; the input is scaled by 1/sqrt(sigma^2 + sigma_data^2)."""

    @staticmethod
    def _ours_match(s) -> bool:
        return True

    def calculate_input(self, sigma, noise):
        sigma = reshape_sigma(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = reshape_sigma(sigma, noise.ndim)
        scale = torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else sigma
        return noise * scale + latent_image

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class V_PREDICTION(EPS):
    """The network predicts v (Salimans & Ho 2022)."""

    @staticmethod
    def _ours_match(s) -> bool:
        return s.prediction in ("v", "edm")

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        d2 = self.sigma_data ** 2
        return model_input * d2 / (sigma ** 2 + d2) - model_output * sigma * self.sigma_data / (sigma ** 2 + d2) ** 0.5


class EDM(V_PREDICTION):
    """EDM's preconditioning (Karras et al. 2022): x0 = c_skip x + c_out F."""

    @staticmethod
    def _ours_match(s) -> bool:
        return s.prediction == "edm"

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = reshape_sigma(sigma, model_output.ndim)
        d2 = self.sigma_data ** 2
        return model_input * d2 / (sigma ** 2 + d2) + model_output * sigma * self.sigma_data / (sigma ** 2 + d2) ** 0.5


class X0(EPS):
    """The network predicts x0 itself."""

    @staticmethod
    def _ours_match(s) -> bool:
        return s.prediction in ("x0", "img_to_img")

    def calculate_denoised(self, sigma, model_output, model_input):
        return model_output


class IMG_TO_IMG(X0):
    """x0 prediction from the noisy latent as it is (no input scaling)."""

    @staticmethod
    def _ours_match(s) -> bool:
        return s.prediction == "img_to_img"

    def calculate_input(self, sigma, noise):
        return noise


# -- sigma tables -------------------------------------------------------------------------------
class ModelSamplingDiscrete(torch.nn.Module, metaclass=_Kind):
    """SD's 1000 discrete timesteps (the "linear" beta schedule), sigma <-> timestep by nearest
    log-sigma and log-linear interpolation; ``model_config.sampling_settings`` may set
    linear_start, linear_end, timesteps and zsnr."""

    @staticmethod
    def _ours_match(s) -> bool:
        return isinstance(s, _ours.DiscreteSchedule)

    def __init__(self, model_config=None, zsnr=None):
        super().__init__()
        settings = getattr(model_config, "sampling_settings", None) or {}
        beta_schedule = settings.get("beta_schedule", "linear")
        if beta_schedule != "linear":
            raise ValueError(f"ModelSamplingDiscrete: beta_schedule {beta_schedule!r} is not provided by latentgraph "
                             f"(only SD's 'linear')")
        self.sigma_data = 1.0
        self._register_schedule(None, beta_schedule, settings.get("timesteps", 1000),
                                settings.get("linear_start", 0.00085), settings.get("linear_end", 0.012),
                                zsnr=settings.get("zsnr", False) if zsnr is None else zsnr)

    def _register_schedule(self, given_betas=None, beta_schedule="linear", timesteps=1000, linear_start=1e-4,
                           linear_end=2e-2, cosine_s=8e-3, zsnr=False):
        betas = given_betas if given_betas is not None else _ours.linear_betas(timesteps, linear_start, linear_end)
        alphas_cumprod = torch.cumprod(1.0 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        self.num_timesteps = int(alphas_cumprod.shape[0])
        self.linear_start, self.linear_end, self.zsnr = linear_start, linear_end, zsnr
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.set_sigmas(_ours.rescale_zero_terminal_snr(sigmas) if zsnr else sigmas)

    def set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The index of the nearest sigma in log space (an integer tensor, as ComfyUI's)."""
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.float().to(self.log_sigmas.device).clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


class ModelSamplingDiscreteEDM(ModelSamplingDiscrete):
    """The discrete table with EDM's timestep 0.25 log(sigma)."""

    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def sigma(self, timestep):
        return (timestep / 0.25).exp()


class ModelSamplingContinuousEDM(torch.nn.Module, metaclass=_Kind):
    """Continuous sigmas (1000 log-spaced for the schedulers that read a table), timestep
    0.25 log(sigma); ``sampling_settings`` may set sigma_min, sigma_max and sigma_data."""

    @staticmethod
    def _ours_match(s) -> bool:
        return isinstance(s, _ours.ContinuousSchedule)

    def __init__(self, model_config=None):
        super().__init__()
        settings = getattr(model_config, "sampling_settings", None) or {}
        self.set_parameters(settings.get("sigma_min", 0.002), settings.get("sigma_max", 120.0),
                            settings.get("sigma_data", 1.0))

    def set_parameters(self, sigma_min: float, sigma_max: float, sigma_data: float) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"set_parameters: need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        self.sigma_data = sigma_data
        sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("log_sigmas", sigmas.log())

    sigma_min = property(lambda self: self.sigmas[0])
    sigma_max = property(lambda self: self.sigmas[-1])

    def timestep(self, sigma):
        return 0.25 * sigma.log()

    def sigma(self, timestep):
        return (timestep / 0.25).exp()

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)


class ModelSamplingContinuousV(ModelSamplingContinuousEDM):
    """Continuous sigmas with the timestep atan(sigma) * 2 / pi."""

    @staticmethod
    def _ours_match(s) -> bool:
        return isinstance(s, _ours.ContinuousSchedule) and s.timing == "v"

    def timestep(self, sigma):
        return sigma.atan() / math.pi * 2

    def sigma(self, timestep):
        return (timestep * math.pi / 2).tan()
