"""Extracting a LoRA from a weight difference (ComfyUI's "Extract and Save Lora", LoraSave).

The input is a network whose weights *are* a difference (ModelMergeSubtract's or
CLIPMergeSubtract's output). Each weight with two or more dimensions becomes a low-rank pair by
a truncated SVD, ``diff ~ (U[:, :r] S[:r]) @ Vh[:r]``, as ComfyUI does: the rank is at most the
weight's smaller side (a conv's in-channels, not in * kh * kw), both factors are clamped to
+-(the 0.99 quantile of their values together), which trims outliers so an fp16 file holds them,
and conv factors are shaped (out, r, 1, 1) and (r, in, kh, kw). ``full_diff`` keeps every
weight whole (``.diff``). With ``bias_diff`` one-dimensional weights (norms) are kept whole too,
and biases as ``.diff_b``. Every tensor is written in fp16.

Keys are ComfyUI's: ``diffusion_model.<LDM path>.lora_up.weight`` for the UNet and
``text_encoders.clip_<l|g|h>.transformer.text_model.<path>...`` for text encoders, which
ComfyUI's LoRA loader and latentgraph's both read.

Differences: ComfyUI runs a full SVD (an (m, m) U: for a 49408-row token embedding that is a
9.8 GB matrix) and uses torch.quantile, which refuses more than 2**24 values, then skips the key
with a warning. Here the SVD is the reduced one (the same first r singular triplets) and the
quantile is computed by selection, so every key is extracted; an SVD that fails is an error
naming the key.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

CLAMP_QUANTILE = 0.99  # ComfyUI's
LORA_TYPES = ("standard", "full_diff")
# float32 bytes an SVD of one weight may hold (its input, U, S and Vh, reduced): the largest SDXL
# weight (the 49408 x 1280 token embedding) needs about 0.5 GB
SVD_BUDGET = 4 * 2**30


class ExtractError(ValueError):
    """A LoRA cannot be extracted from the difference given."""


def quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile's linear interpolation (the value at position q * (n - 1) of the sorted
    values), by selection, with no limit on the number of values."""
    flat = values.flatten()
    # as torch.quantile: q rounded to the values' dtype, its position computed in double
    pos = float(torch.tensor(q, dtype=flat.dtype)) * (flat.numel() - 1)
    lo = math.floor(pos)
    low = flat.kthvalue(lo + 1).values
    if lo + 1 >= flat.numel():
        return low
    high = flat.kthvalue(lo + 2).values
    return torch.lerp(low, high, torch.tensor(pos - lo, dtype=flat.dtype))


def _check_svd_budget(shape: tuple[int, ...], key: str) -> None:
    m, n = shape[0], math.prod(shape[1:])
    k = min(m, n)
    need = 4 * (m * n + m * k + k + k * n)
    if need > SVD_BUDGET:
        raise ExtractError(f"{key}: an SVD of a {m} x {n} weight needs {need / 2**30:.1f} GiB, over the "
                           f"{SVD_BUDGET / 2**30:.0f} GiB budget for one weight (SVD_BUDGET)")


def low_rank(diff: torch.Tensor, rank: int, key: str, clamp: float | None = CLAMP_QUANTILE
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with ``up @ down ~ diff`` at ``rank`` (at most the smaller side), float32.
    ``clamp`` None keeps the factors as the SVD gives them (for tests)."""
    out_dim, in_dim = diff.shape[0], diff.shape[1]
    rank = min(rank, in_dim, out_dim)
    _check_svd_budget(tuple(diff.shape), key)
    matrix = diff.float().flatten(1)  # (out, in * kh * kw)
    try:
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    except RuntimeError as exc:  # NaN or inf in the difference, typically
        raise ExtractError(f"{key}: the SVD of the weight difference failed ({exc})") from None
    up = u[:, :rank] @ torch.diag(s[:rank])  # (out, rank)
    down = vh[:rank, :]  # (rank, in * kh * kw)
    if clamp is not None:
        hi = quantile(torch.cat([up.flatten(), down.flatten()]), clamp)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if diff.dim() == 4:
        up = up.reshape(out_dim, rank, 1, 1)
        down = down.reshape(rank, in_dim, diff.shape[2], diff.shape[3])
    return up, down


def extract(params: Iterable[tuple[str, torch.Tensor]], rank: int, lora_type: str, bias_diff: bool,
            name_of, clamp: float | None = CLAMP_QUANTILE) -> dict[str, torch.Tensor]:
    """LoRA tensors (fp16, on the CPU) for the difference weights ``params`` (name, tensor);
    ``name_of(param name without .weight/.bias)`` gives the LoRA module name."""
    if lora_type not in LORA_TYPES:
        raise ExtractError(f"lora_type must be one of {', '.join(LORA_TYPES)}, not {lora_type!r}")
    out: dict[str, torch.Tensor] = {}

    def put(key: str, value: torch.Tensor) -> None:
        out[key] = value.detach().contiguous().to("cpu", torch.float16)

    for name, value in params:
        if name.endswith(".weight"):
            module = name_of(name[: -len(".weight")])
            if lora_type == "full_diff":
                put(f"{module}.diff", value)
            elif value.dim() < 2:
                if bias_diff:
                    put(f"{module}.diff", value)
            else:
                up, down = low_rank(value, rank, name, clamp)
                put(f"{module}.lora_up.weight", up)
                put(f"{module}.lora_down.weight", down)
        elif bias_diff and name.endswith(".bias"):
            put(f"{name_of(name[: -len('.bias')])}.diff_b", value)
    return out


def unet_name(path: str) -> str:
    return "diffusion_model." + path


def text_name(slot: str):
    """ComfyUI's generic text-encoder LoRA name for one of our encoder paths: its CLIP state-dict
    key (``clip_l.transformer.text_model.<path>``) under ``text_encoders.``."""
    def name(path: str) -> str:
        rest = "text_model." + path[len("transformer."):] if path.startswith("transformer.") else path
        return f"text_encoders.clip_{slot}.transformer.{rest}"

    return name
