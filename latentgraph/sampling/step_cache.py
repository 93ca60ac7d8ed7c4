"""Step caches: skip model calls while the output is predicted to change little (EasyCache,
Zhou et al. 2025, "Less is Enough: Training-Free Video Diffusion Acceleration via Runtime-Adaptive
Cache"), as ComfyUI 0.3.64's EasyCache and LazyCache nodes do it.

Both keep, per run, the last call's input x and output, and the *transformation rate*
k = |Δoutput| / |Δinput| (mean absolute changes, measured on every 8th latent pixel of each axis).
At a new call the output change is estimated as k * |Δinput| / |last output| and accumulated;
while the sum stays under ``reuse_threshold`` the call is skipped and the output is the input
plus the last (output - input). When it reaches the threshold the model runs and the sum restarts.
Only calls whose sigma lies within (end_percent's sigma, start_percent's sigma] are candidates.

EasyCache wraps the UNet ("diffusion_model" wrapper: x is the UNet's scaled input, the output its
eps) and keeps one difference per conditioning entry; LazyCache wraps the whole guided
prediction ("predict_noise" wrapper: x is the sampler's latent, the output the denoised one).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)
SUBSAMPLE = 8  # ComfyUI's subsample_factor: change rates are measured on x[..., ::8, ::8]


def _mean_abs(t: torch.Tensor) -> torch.Tensor:
    return t.flatten().abs().mean()


class StepCache:
    """The per-run state both caches share; ``fresh()`` gives an unused copy for a new run."""

    name = "StepCache"

    def __init__(self, reuse_threshold: float, start_percent: float, end_percent: float, verbose: bool = False):
        self.reuse_threshold, self.verbose = reuse_threshold, verbose
        self.start_percent, self.end_percent = start_percent, end_percent
        self.start_t, self.end_t = 0.0, 0.0
        self.rate: torch.Tensor | float | None = None  # the relative transformation rate k
        self.clear()

    def clear(self) -> None:
        self.cumulative = 0.0
        self.x_prev: torch.Tensor | None = None  # subsampled input of the last model call
        self.out_prev: torch.Tensor | None = None  # subsampled output of the last model call
        self.out_prev_norm: torch.Tensor | None = None  # mean |output| of the last call
        self.output_change_rates: list[float] = []
        self.approx_output_change_rates: list[float] = []
        self.skipped = 0  # model calls answered from the cache
        self.metadata = None

    def reset(self) -> None:
        """ComfyUI's reset (on a change of shape, dtype or device): note k becomes 0.0, not None."""
        self.rate = 0.0
        self.clear()

    def fresh(self) -> "StepCache":
        return type(self)(self.reuse_threshold, self.start_percent, self.end_percent, self.verbose)

    def prepare(self, schedule) -> "StepCache":
        self.start_t = schedule.percent_to_sigma(self.start_percent)
        self.end_t = schedule.percent_to_sigma(self.end_percent)
        return self

    def past_end(self, sigma: torch.Tensor) -> bool:
        return not bool(sigma[0] > self.end_t)

    def active(self, sigma: torch.Tensor) -> bool:
        return bool(sigma[0] <= self.start_t)

    def check_metadata(self, x: torch.Tensor, shape) -> None:
        metadata = (x.device, x.dtype, tuple(shape))
        if self.metadata is None:
            self.metadata = metadata
        elif metadata != self.metadata:
            log.warning("%s - Tensor shape, dtype or device changed, resetting state", self.name)
            self.reset()

    def decide(self, input_change: torch.Tensor) -> bool:
        """Accumulate the estimated output change; True when this call is to be skipped."""
        self.cumulative = self.cumulative + self.rate * input_change / self.out_prev_norm
        skip = bool(self.cumulative < self.reuse_threshold)
        if self.verbose:
            what = "skipping step" if skip else "NOT skipping step"
            log.info("%s [verbose] - %s; cumulative_change_rate: %s, reuse_threshold: %s", self.name, what,
                     self.cumulative, self.reuse_threshold)
        if not skip:
            self.cumulative = 0.0
        return skip

    def measure(self, out_sub: torch.Tensor, input_change: torch.Tensor | None) -> None:
        """After a model call: record the output's change and update k = Δoutput / Δinput."""
        output_change = _mean_abs(out_sub - self.out_prev)
        if self.verbose:
            self.output_change_rates.append((output_change / self.out_prev_norm).item())
        if self.rate is not None:
            approx = self.rate * input_change / self.out_prev_norm
            self.approx_output_change_rates.append(float(approx))
            if self.verbose:
                log.info("%s [verbose] - approx_output_change_rate: %s", self.name, approx)
        if input_change is not None:
            self.rate = output_change / input_change
        if self.verbose:
            log.info("%s [verbose] - output_change_rate: %s", self.name, output_change / self.out_prev_norm)

    def remember(self, x_sub: torch.Tensor, out_sub: torch.Tensor, output: torch.Tensor) -> None:
        self.x_prev, self.out_prev = x_sub.clone(), out_sub.clone()
        self.out_prev_norm = _mean_abs(output)


class EasyCacheState(StepCache):
    """EasyCache: decisions on the first conditioning entry seen; one cached difference per
    entry (ComfyUI's per-cond uuids, here ``transformer_options["uuids"]``)."""

    name = "EasyCache"

    def clear(self) -> None:
        super().clear()
        self.initial_step, self.skip_current_step = True, False
        self.first_uuid = None
        self.diffs: dict = {}

    def subsample(self, t: torch.Tensor, uuids: list) -> torch.Tensor:
        n = t.shape[0] // len(uuids)
        i = uuids.index(self.first_uuid)
        return t[i * n:(i + 1) * n, ..., ::SUBSAMPLE, ::SUBSAMPLE]

    def apply(self, x: torch.Tensor, uuids: list) -> torch.Tensor:
        """A skipped call's output. As ComfyUI 0.3.64 computes it, every entry's difference is
        added to the whole batch (with one latent per entry each chunk gets the sum of all)."""
        if self.first_uuid in uuids:
            self.skipped += 1
        for uuid in uuids:
            diff = self.diffs[uuid]
            if diff.shape[0] not in (1, x.shape[0]) or diff.shape[1:] != x.shape[1:]:
                raise ValueError(f"EasyCache: the cached difference {tuple(diff.shape)} does not fit the UNet input "
                                 f"{tuple(x.shape)} (a batch of several latents with both prompts in one call, "
                                 f"which ComfyUI 0.3.64 cannot do either): use LazyCache, or a batch of 1")
            x = x + diff.to(x.device)
        return x

    def store(self, output: torch.Tensor, x: torch.Tensor, uuids: list) -> None:
        diff = output - x
        n = diff.shape[0] // len(uuids)
        for i, uuid in enumerate(uuids):
            self.diffs[uuid] = diff[i * n:(i + 1) * n]


def easycache_unet_wrapper(executor, x, t, context, y, control, to):
    """The "diffusion_model" wrapper of EasyCache: x (B, C, h, w) is the UNet's scaled input."""
    cache: EasyCacheState = to["easycache"]
    sigma, uuids = to.get("sigmas"), to.get("uuids")
    # a call from outside a guided prediction (no entries, no step) is not the cache's to judge
    if sigma is None or not uuids or cache.past_end(sigma):
        return executor(x, t, context, y, control, to)
    has_first = cache.first_uuid in uuids
    input_change = None
    if cache.active(sigma):
        cache.check_metadata(x, x.shape[1:])
        if cache.skip_current_step:  # the first entry's call already chose to skip this step
            if cache.verbose:
                log.info("EasyCache [verbose] - was marked to skip this step by %s. Present uuids: %s",
                         cache.first_uuid, uuids)
            return cache.apply(x, uuids)
        if cache.initial_step:
            cache.first_uuid, cache.initial_step = uuids[0], False
            has_first = True
        if has_first:
            if cache.x_prev is not None:
                input_change = _mean_abs(cache.subsample(x, uuids) - cache.x_prev)
            if cache.out_prev_norm is not None and cache.rate is not None and cache.decide(input_change):
                cache.skip_current_step = True
                return cache.apply(x, uuids)
    output = executor(x, t, context, y, control, to)
    if has_first and cache.out_prev_norm is not None:
        cache.measure(cache.subsample(output, uuids), input_change)
    cache.store(output, x, uuids)
    if has_first:
        cache.remember(cache.subsample(x, uuids), cache.subsample(output, uuids), output)
    return output


def easycache_step_wrapper(executor, x, sigma, model_options, seed):
    """A new guided prediction: no entry has chosen to skip yet (ComfyUI does this per
    calc_cond_batch; one per prediction with CFG)."""
    model_options["transformer_options"]["easycache"].skip_current_step = False
    return executor(x, sigma, model_options, seed)


class LazyCacheState(StepCache):
    """LazyCache: one decision and one difference for the whole guided prediction."""

    name = "LazyCache"

    def clear(self) -> None:
        super().clear()
        self.diff: torch.Tensor | None = None


def lazycache_predict_wrapper(executor, x, sigma, model_options, seed):
    """The "predict_noise" wrapper of LazyCache: x is the sampler's latent, the output the
    guided denoised latent."""
    cache: LazyCacheState = model_options["transformer_options"]["easycache"]
    if cache.past_end(sigma):
        return executor(x, sigma, model_options, seed)
    input_change = None
    if cache.active(sigma):
        cache.check_metadata(x, x.shape)
        if cache.x_prev is not None:
            input_change = _mean_abs(x[..., ::SUBSAMPLE, ::SUBSAMPLE] - cache.x_prev)
            if cache.out_prev_norm is not None and cache.rate is not None and cache.decide(input_change):
                cache.skipped += 1
                return x + cache.diff.to(x.device)
    output = executor(x, sigma, model_options, seed)
    sub = output[..., ::SUBSAMPLE, ::SUBSAMPLE]
    if cache.out_prev_norm is not None:
        cache.measure(sub, input_change)
    cache.diff = output - x
    cache.remember(x[..., ::SUBSAMPLE, ::SUBSAMPLE], sub, output)
    return output


def cache_run_wrapper(executor, options: dict, info: dict):
    """The "outer_sample" wrapper: a fresh cache for this run (its sigmas from the model's
    schedule), its summary logged at the end, as ComfyUI does."""
    options = dict(options)
    to = options["transformer_options"] = dict(options["transformer_options"])
    cache = to["easycache"] = to["easycache"].fresh().prepare(info["model_sampling"])
    log.info("%s enabled - threshold: %s, start_percent: %s, end_percent: %s", cache.name, cache.reuse_threshold,
             cache.start_percent, cache.end_percent)
    try:
        return executor(options, info)
    finally:
        if cache.verbose:
            log.info("%s [verbose] - output_change_rates %d: %s", cache.name, len(cache.output_change_rates),
                     cache.output_change_rates)
            log.info("%s [verbose] - approx_output_change_rates %d: %s", cache.name,
                     len(cache.approx_output_change_rates), cache.approx_output_change_rates)
        total = len(info["sigmas"]) - 1
        speedup = total / (total - cache.skipped) if total != cache.skipped else 1.0
        log.info("%s - skipped %d/%d steps (%.2fx speedup).", cache.name, cache.skipped, total, speedup)
