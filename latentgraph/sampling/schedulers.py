"""Sigma schedules: pure functions from a step count to a decreasing list of sigmas ending in 0.

Names and numerics are ComfyUI's so that a workflow's "scheduler" picks the same list; the
lists come out bit-identical to ComfyUI's KSampler (tests/fixtures/comfy_reference/sigmas.json).
Every scheduler in ``SCHEDULERS`` takes ``(schedule, steps)`` where ``schedule`` is a
``DiscreteSchedule`` (anything with ``sigmas``, ``sigma_min``, ``sigma_max``, ``timestep`` and
``sigma``). Names in the registry may be added, never changed or removed.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .schedule import DiscreteSchedule

# samplers that take two model steps near the end: ComfyUI schedules one step more for them and
# drops the penultimate sigma, so their last step spans a wider interval
DISCARD_PENULTIMATE = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log-sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """"Align Your Steps"' KL-optimal schedule (Sabour et al. 2024, eq. 7): evenly spaced in
    arctan(sigma). n == 1 divides 0 by 0 and gives NaN, as in ComfyUI."""
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


def simple_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every (1000/steps)-th entry of the sigma table, from the top."""
    stride = len(schedule.sigmas) / steps
    sigs = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def ddim_uniform_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep spacing (Song et al. 2021): table entries 1, 1+k, 1+2k, ..."""
    sigmas = schedule.sigmas
    if math.isclose(float(sigmas[1]), 0, abs_tol=0.00001):
        steps, sigs = steps + 1, []
    else:
        sigs = [0.0]
    stride = max(len(sigmas) // steps, 1)
    sigs += [float(sigmas[i]) for i in range(1, len(sigmas), stride)]
    return torch.FloatTensor(sigs[::-1])


def normal_scheduler(schedule: DiscreteSchedule, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from the first to the last training timestep (sgm: the last one
    left out, as Stability's sgm code spaces them)."""
    start, end = schedule.timestep(schedule.sigma_max), schedule.timestep(schedule.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(schedule.sigma(end)), 0, abs_tol=0.00001):
            steps, append_zero = steps + 1, False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(schedule.sigma(t)) for t in timesteps]
    return torch.FloatTensor(sigs + [0.0] if append_zero else sigs)


def sgm_uniform_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    return normal_scheduler(schedule, steps, sgm=True)


def beta_scheduler(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Timesteps at quantiles of a Beta(alpha, beta) distribution (Lee et al. 2024, "Beta
    Sampling is All You Need"); repeated timesteps are dropped."""
    import scipy.stats  # 0.4 s to import: paid by the beta scheduler alone

    total = len(schedule.sigmas) - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    timesteps = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta) * total)
    sigs, last = [], -1
    for t in timesteps:
        if t != last:
            sigs.append(float(schedule.sigmas[int(t)]))
        last = t
    return torch.FloatTensor(sigs + [0.0])


def linear_quadratic_scheduler(schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025,
                               linear_steps: int | None = None) -> torch.Tensor:
    """Mochi's schedule: 1 - sigma/sigma_max rises linearly to threshold_noise over the first
    half of the steps, then quadratically to 1."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic = [quadratic_coef * (i ** 2) + linear_coef * i + const for i in range(linear_steps, steps)]
        fractions = [1.0 - f for f in linear + quadratic + [1.0]]
    return torch.FloatTensor(fractions) * schedule.sigma_max.cpu()


def karras_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    return karras_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


def exponential_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    return exponential_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


def kl_optimal_scheduler(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    return kl_optimal_sigmas(steps, float(schedule.sigma_min), float(schedule.sigma_max))


SCHEDULERS: dict[str, Callable[[DiscreteSchedule, int], torch.Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": karras_scheduler,
    "exponential": exponential_scheduler,
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": kl_optimal_scheduler,
}
SCHEDULER_NAMES = list(SCHEDULERS)


def scheduler_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int,
                     sampler_name: str | None = None) -> torch.Tensor:
    """The named scheduler's full list for ``steps`` steps, with the penultimate sigma dropped
    (after scheduling one step more) for the samplers in DISCARD_PENULTIMATE."""
    fn = SCHEDULERS.get(scheduler)
    if fn is None:
        raise ValueError(f"unknown scheduler {scheduler!r}: expected one of {', '.join(SCHEDULER_NAMES)}")
    discard = sampler_name in DISCARD_PENULTIMATE
    sigmas = fn(schedule, steps + 1 if discard else steps)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def compute_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int, denoise: float | None = 1.0,
                   sampler_name: str | None = None) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler runs: for denoise < 1 the schedule of int(steps/denoise)
    steps is built and its last steps+1 sigmas kept (img2img starts part-way down); denoise <= 0
    gives an empty schedule (nothing to do)."""
    if denoise is None or denoise > 0.9999:
        return scheduler_sigmas(schedule, scheduler, steps, sampler_name)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    sigmas = scheduler_sigmas(schedule, scheduler, int(steps / denoise), sampler_name)
    return sigmas[-(steps + 1):]


def sd_turbo_sigmas(schedule: DiscreteSchedule, steps: int, denoise: float = 1.0) -> torch.Tensor:
    """SD-Turbo's schedule: timesteps 999, 899, ..., 99, starting lower for denoise < 1."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    return _append_zero(schedule.sigma(timesteps))
