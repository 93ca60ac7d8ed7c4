"""The discrete DDPM noise schedule of Stable Diffusion seen in sigma space (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", sec. 2 / appendix C.3.1).

A UNet trained on 1000 discrete timesteps is turned into a denoiser of the variance-exploding
form D(x; sigma): the latent x = x0 + sigma * n is scaled by 1/sqrt(sigma^2 + 1) on the way in
and the network's prediction (eps or v) is turned back into x0 on the way out. The numerics
follow ComfyUI's ModelSamplingDiscrete (float64 betas, a float32 sigma table, nearest-log-sigma
timesteps) so that sigma schedules come out bit-identical.
"""

from __future__ import annotations

import math

import torch

# what the network predicts: the noise, v (Salimans & Ho 2022), x0 itself, or x0 from an
# unscaled input ("img_to_img", ComfyUI's name for models fed the noisy latent as it is)
PREDICTIONS = ("eps", "v", "x0", "img_to_img")
# alpha_bar of the last timestep after zero-terminal-SNR rescaling: exactly 0 would give an
# infinite sigma, so ComfyUI pins it to this small value (sigma ~ 4519)
ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def linear_betas(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> torch.Tensor:
    """SD's "linear" schedule: betas evenly spaced in sqrt(beta), float64, (timesteps,)."""
    return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2


def rescale_zero_terminal_snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Shift and scale sqrt(alpha_bar) so the last timestep has zero SNR while the first keeps
    its value (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed",
    Algorithm 1), done on the sigma table as ComfyUI does."""
    sqrt_ab = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * (first / (first - last))
    alpha_bar = sqrt_ab ** 2
    alpha_bar[-1] = ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


def _per_sample(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """sigma () or (B,) -> a shape that broadcasts against a (B, ...) tensor of ndim dims."""
    if sigma.numel() == 1:
        return sigma.reshape(())
    return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))


class SigmaTable:
    """What every noise schedule offers over its table ``sigmas`` (increasing, one per training
    timestep): its size and ends, and how noise enters and leaves a latent (eps, v and EDM
    models alike, as ComfyUI's prediction classes)."""

    sigmas: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas)

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def noise_scaling(self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """The sampler's starting point: latent + noise * sigma, or noise * sqrt(1 + sigma^2)
        when starting from pure noise at the top of the schedule (max_denoise)."""
        sigma = _per_sample(torch.as_tensor(sigma, device=noise.device), noise.ndim)
        scaled = noise * torch.sqrt(1.0 + sigma ** 2.0) if max_denoise else noise * sigma
        return scaled + latent

    def inverse_noise_scaling(self, sigma: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """The sampler's result as a latent (the identity for eps/v models)."""
        return latent


class DiscreteSchedule(SigmaTable):
    """Sigma table of a discrete-time eps- or v-prediction model, with the conversions between
    sigma, timestep and the network's input/output (ComfyUI's ModelSamplingDiscrete + EPS/V)."""

    def __init__(self, prediction: str = "eps", zsnr: bool = False, linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000):
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction type {prediction!r}: expected one of {', '.join(PREDICTIONS)}")
        self.prediction = prediction
        self.zsnr = zsnr
        self.betas = linear_betas(timesteps, linear_start, linear_end)  # (T,) float64
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)  # (T,) float64
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        if zsnr:
            sigmas = rescale_zero_terminal_snr(sigmas)
        self.sigmas = sigmas.float()  # (T,) increasing with the timestep
        self.log_sigmas = sigmas.log().float()

    def __repr__(self) -> str:
        return f"DiscreteSchedule(prediction={self.prediction!r}, zsnr={self.zsnr})"

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep whose log-sigma is nearest, as float (same shape as sigma)."""
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device).float()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolating the table linearly in log-sigma."""
        timestep = torch.as_tensor(timestep)
        t = timestep.float().to(self.log_sigmas.device).clamp(0, self.num_timesteps - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        """Sigma at a fraction of the way through sampling (0 = start, 1 = end), for timestep ranges."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma(torch.tensor((1.0 - percent) * 999.0)).item()

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """c_in: the UNet sees x / sqrt(sigma^2 + 1) (img_to_img: x as it is)."""
        if self.prediction == "img_to_img":
            return x
        sigma = _per_sample(torch.as_tensor(sigma, device=x.device), x.ndim)
        return x / (sigma ** 2 + 1.0) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, model_input: torch.Tensor) -> torch.Tensor:
        """x0 from the network output: eps -> x - sigma * eps; v -> c_skip * x - c_out * v;
        x0 / img_to_img -> the output itself."""
        if self.prediction in ("x0", "img_to_img"):
            return model_output
        sigma = _per_sample(torch.as_tensor(sigma, device=model_output.device), model_output.ndim)
        if self.prediction == "eps":
            return model_input - model_output * sigma
        return model_input / (sigma ** 2 + 1.0) - model_output * sigma / (sigma ** 2 + 1.0) ** 0.5

class LCMSchedule(DiscreteSchedule):
    """A latent consistency model's schedule (Luo et al. 2023, "Latent Consistency Models"):
    distilled on ``original_timesteps`` of the 1000 (every 20th, ending at 999), so the sigma
    table keeps only those, timesteps snap to them, and the eps output goes through the
    consistency boundary condition c_skip * x + c_out * x0 (sigma_data 0.5, timestep x 10).
    The numbers are ComfyUI's (ModelSamplingDiscrete "lcm")."""

    SIGMA_DATA = 0.5
    TIMESTEP_SCALING = 10.0

    def __init__(self, zsnr: bool = False, original_timesteps: int = 50, **kwargs):
        super().__init__("eps", zsnr, **kwargs)
        full = self.sigmas
        self.skip_steps = len(full) // original_timesteps
        # keep timesteps T-1, T-1-skip, ... (ascending): entry i is timestep offset + skip * i;
        # the log is taken of the float32 values, as ComfyUI does for this table
        self.offset = len(full) - 1 - (original_timesteps - 1) * self.skip_steps  # 19 for 1000/50
        keep = torch.arange(original_timesteps) * self.skip_steps + self.offset
        self.sigmas = full[keep]
        self.log_sigmas = full[keep].log()

    def __repr__(self) -> str:
        return f"LCMSchedule(zsnr={self.zsnr})"

    @property
    def num_timesteps(self) -> int:
        return len(self.sigmas) * self.skip_steps

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The distilled timestep nearest in log-sigma (19, 39, ..., 999)."""
        sigma = torch.as_tensor(sigma)
        dists = sigma.log().to(self.log_sigmas.device) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + self.offset).to(sigma.device).float()

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (fractional) timestep, interpolated over the distilled table."""
        timestep = torch.as_tensor(timestep)
        t = (timestep.float().to(self.log_sigmas.device) - self.offset) / self.skip_steps
        t = t.clamp(0, len(self.sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp().to(timestep.device)

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, device=model_output.device)
        shape = sigma.shape[:1] + (1,) * (model_output.ndim - 1)
        scaled_t = self.timestep(sigma).view(shape) * self.TIMESTEP_SCALING
        x0 = model_input - model_output * sigma.view(shape)
        c_skip = self.SIGMA_DATA ** 2 / (scaled_t ** 2 + self.SIGMA_DATA ** 2)
        c_out = scaled_t / (scaled_t ** 2 + self.SIGMA_DATA ** 2) ** 0.5
        return c_out * x0 + c_skip * model_input


class ContinuousSchedule(SigmaTable):
    """A model trained on continuous noise levels (ComfyUI's ModelSamplingContinuousEDM and
    ModelSamplingContinuousV): 1000 sigmas log-spaced from sigma_min to sigma_max (float32, for
    the schedulers that read a table), the timestep a closed form of sigma -- ``"edm"``:
    0.25 * log(sigma) (Karras et al. 2022, table 1), ``"v"``: atan(sigma) * 2 / pi -- and the
    preconditioning of Karras et al. with ``sigma_data``: c_in = 1 / sqrt(sigma^2 + sigma_data^2),
    x0 from the output as eps, v (CosXL) or EDM's F (Playground v2.5: c_skip x + c_out F).
    ``latent_format``, when set, replaces the family's (Playground v2.5's mean and std)."""

    def __init__(self, prediction: str, sigma_min: float, sigma_max: float, sigma_data: float = 1.0,
                 timing: str = "edm", latent_format: "LatentFormat | None" = None):
        if prediction not in ("eps", "v", "edm"):
            raise ValueError(f"unknown prediction type {prediction!r} for continuous sampling: expected eps, v or edm")
        if timing not in ("edm", "v"):
            raise ValueError(f"unknown timestep form {timing!r}: expected edm or v")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"continuous sampling needs 0 < sigma_min < sigma_max, got sigma_min {sigma_min:g} "
                             f"and sigma_max {sigma_max:g}")
        self.prediction, self.timing, self.sigma_data = prediction, timing, float(sigma_data)
        self.latent_format = latent_format
        self.zsnr = False
        self.sigmas = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000).exp()  # (1000,) float32
        self.log_sigmas = self.sigmas.log()

    def __repr__(self) -> str:
        return (f"ContinuousSchedule(prediction={self.prediction!r}, timing={self.timing!r}, "
                f"sigma_min={float(self.sigma_min):g}, sigma_max={float(self.sigma_max):g}, "
                f"sigma_data={self.sigma_data:g})")

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        return 0.25 * sigma.log() if self.timing == "edm" else sigma.atan() / math.pi * 2

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        timestep = torch.as_tensor(timestep)
        return (timestep / 0.25).exp() if self.timing == "edm" else (timestep * math.pi / 2).tan()

    def percent_to_sigma(self, percent: float) -> float:
        """Log-linear from sigma_max (0) to sigma_min (1)."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        log_min = math.log(self.sigma_min)
        return math.exp((math.log(self.sigma_max) - log_min) * (1.0 - percent) + log_min)

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = _per_sample(torch.as_tensor(sigma, device=x.device), x.ndim)
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor,
                           model_input: torch.Tensor) -> torch.Tensor:
        sigma = _per_sample(torch.as_tensor(sigma, device=model_output.device), model_output.ndim)
        if self.prediction == "eps":
            return model_input - model_output * sigma
        sd2 = self.sigma_data ** 2
        skip = model_input * sd2 / (sigma ** 2 + sd2)
        out = model_output * sigma * self.sigma_data / (sigma ** 2 + sd2) ** 0.5
        return skip - out if self.prediction == "v" else skip + out



class LatentFormat:
    """How a family's LATENT (the VAE's space) maps to the space the UNet samples in:
    ``scale * (x - mean) / std`` per channel (mean 0, std 1 for the plain families), and back."""

    def __init__(self, scale: float, mean: tuple | None = None, std: tuple | None = None, name: str = ""):
        self.scale, self.mean, self.std, self.name = float(scale), mean, std, name

    def __repr__(self) -> str:
        return f"LatentFormat({self.name or self.scale})"

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return mean, std

    def process_in(self, x: torch.Tensor) -> torch.Tensor:
        """VAE latent -> UNet space."""
        if self.mean is None:
            return x * self.scale
        mean, std = self._stats(x)
        return (x - mean) * self.scale / std

    def process_out(self, x: torch.Tensor) -> torch.Tensor:
        """UNet space -> VAE latent."""
        if self.mean is None:
            return x / self.scale
        mean, std = self._stats(x)
        return x * std / self.scale + mean


# Playground v2.5's latent statistics (ComfyUI's SDXL_Playground_2_5 latent format; its scale 0.5)
PLAYGROUND_V25 = LatentFormat(0.5, (-1.6574, 1.886, -1.383, 2.5155), (8.4927, 5.9022, 6.5498, 5.2299),
                              "sdxl_playground_2_5")
# Architecture.latent_format names -> formats (None: the family's plain scale)
LATENT_FORMATS = {"playground_v25": PLAYGROUND_V25}


def as_latent_format(scale: "float | LatentFormat") -> LatentFormat:
    """A LatentFormat from a plain latent scale (or the format itself)."""
    return scale if isinstance(scale, LatentFormat) else LatentFormat(scale)
