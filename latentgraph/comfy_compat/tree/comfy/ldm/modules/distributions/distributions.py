"""ComfyUI's ``comfy.ldm.modules.distributions.distributions``: the diagonal Gaussian an
AutoencoderKL encoder describes (its output split into mean and log-variance along channels)."""

from __future__ import annotations

import torch

from latentgraph.comfy_compat import runtime

__all__ = ["DiagonalGaussianDistribution"]


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class DiagonalGaussianDistribution:
    """``parameters`` (B, 2C, ...): mean and log-variance. The log-variance is clamped to
    [-30, 20]; ``deterministic`` makes the variance zero (``sample`` is then the mean)."""

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        if not isinstance(parameters, torch.Tensor) or parameters.ndim < 2 or parameters.shape[1] % 2:
            raise ValueError("DiagonalGaussianDistribution: parameters must be a tensor with an even number of "
                             f"channels (mean and log-variance), got {getattr(parameters, 'shape', type(parameters))}")
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)
        if deterministic:
            self.var = self.std = torch.zeros_like(self.mean)

    def sample(self) -> torch.Tensor:
        return self.mean + self.std * torch.randn(self.mean.shape, device=self.mean.device, dtype=self.mean.dtype)

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self, other: "DiagonalGaussianDistribution | None" = None) -> torch.Tensor:
        """KL divergence to ``other`` (the standard normal when None), summed over C, H, W."""
        if self.deterministic:
            return torch.tensor([0.0])
        dims = [1, 2, 3]
        if other is None:
            return 0.5 * torch.sum(self.mean ** 2 + self.var - 1.0 - self.logvar, dim=dims)
        return 0.5 * torch.sum((self.mean - other.mean) ** 2 / other.var + self.var / other.var - 1.0
                               - self.logvar + other.logvar, dim=dims)

    def nll(self, sample: torch.Tensor, dims=(1, 2, 3)) -> torch.Tensor:
        """Negative log-likelihood of ``sample``, summed over ``dims``."""
        if self.deterministic:
            return torch.tensor([0.0])
        log_two_pi = torch.log(torch.tensor(2.0 * torch.pi))
        return 0.5 * torch.sum(log_two_pi + self.logvar + (sample - self.mean) ** 2 / self.var, dim=list(dims))
