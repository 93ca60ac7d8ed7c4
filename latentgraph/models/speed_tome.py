"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, "Token Merging for Fast Stable
Diffusion"), as ComfyUI 0.3.64's TomePatchModel applies it: in the self-attention of the
full-resolution transformer blocks only, the query tokens are split into destinations (one
random pixel of every 2x2 cell) and sources (the rest); the ``r = int(N * ratio)`` sources most
similar (cosine) to some destination are averaged into it, attention runs on the fewer queries
(keys and values stay whole) and its output is copied back to every merged token.

The random destinations come from a CPU ``torch.Generator`` handed in by the caller: ComfyUI
draws them from torch's global generator, which its KSampler has just seeded with the noise seed
and advanced by the noise, so the caller seeds one the same way (see TomeRun)."""

from __future__ import annotations

import math
from typing import Callable

import torch

STRIDE = 2  # one destination token per STRIDE x STRIDE cell


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def bipartite_merge(metric: torch.Tensor, w: int, h: int, r: int, generator: torch.Generator | None
                    ) -> tuple[Callable, Callable]:
    """merge(x) (B, N, C) -> (B, N - r, C) and unmerge back, chosen by ``metric`` (B, N, C)
    whose N tokens are an h x w map, row by row."""
    B, N, _ = metric.shape
    if r <= 0 or w == 1 or h == 1:
        return _identity, _identity
    cells_h, cells_w = h // STRIDE, w // STRIDE
    # one random destination per cell: marked -1 in an index map, sources 0
    pick = torch.randint(STRIDE * STRIDE, size=(cells_h, cells_w, 1), generator=generator)
    pick = pick.to(metric.device)
    cells = torch.zeros(cells_h, cells_w, STRIDE * STRIDE, device=metric.device, dtype=torch.int64)
    cells.scatter_(2, pick, -torch.ones_like(pick))
    cells = cells.view(cells_h, cells_w, STRIDE, STRIDE).transpose(1, 2).reshape(cells_h * STRIDE, cells_w * STRIDE)
    if cells.shape != (h, w):  # rows/columns past the last whole cell are all sources
        full = torch.zeros(h, w, device=metric.device, dtype=torch.int64)
        full[:cells.shape[0], :cells.shape[1]] = cells
        cells = full
    order = cells.reshape(1, -1, 1).argsort(dim=1)  # destinations (-1) first, then sources
    n_dst = cells_h * cells_w
    src_pos, dst_pos = order[:, n_dst:, :], order[:, :n_dst, :]

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[-1]
        return (torch.gather(x, 1, src_pos.expand(B, N - n_dst, c)),
                torch.gather(x, 1, dst_pos.expand(B, n_dst, c)))

    with torch.no_grad():
        a, b = split(metric / metric.norm(dim=-1, keepdim=True))
        best, best_dst = (a @ b.transpose(-1, -2)).max(dim=-1)  # (B, n_src) cosine to the nearest destination
        r = min(a.shape[1], r)
        ranked = best.argsort(dim=-1, descending=True)[..., None]
        kept, merged = ranked[..., r:, :], ranked[..., :r, :]
        into = torch.gather(best_dst[..., None], -2, merged)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        n, t, c = src.shape
        unm = torch.gather(src, -2, kept.expand(n, t - r, c))
        moved = torch.gather(src, -2, merged.expand(n, r, c))
        dst = dst.scatter_reduce(-2, into.expand(n, r, c), moved, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        n_kept = kept.shape[1]
        unm, dst = x[..., :n_kept, :], x[..., n_kept:, :]
        c = unm.shape[-1]
        out = torch.zeros(B, N, c, device=x.device, dtype=x.dtype)
        out.scatter_(-2, dst_pos.expand(B, n_dst, c), dst)
        src_all = src_pos.expand(B, src_pos.shape[1], 1)
        out.scatter_(-2, torch.gather(src_all, 1, kept).expand(B, n_kept, c), unm)
        out.scatter_(-2, torch.gather(src_all, 1, merged).expand(B, r, c),
                     torch.gather(dst, -2, into.expand(B, r, c)))
        return out

    return merge, unmerge


def tome_functions(q: torch.Tensor, ratio: float, original_shape, generator: torch.Generator | None
                   ) -> tuple[Callable, Callable]:
    """Merge/unmerge for a self-attention over q (B, N, C): only at the UNet's full resolution
    (N tokens = the latent's h*w), identity elsewhere."""
    _, _, height, width = original_shape
    downsample = int(math.ceil(math.sqrt((height * width) // q.shape[1])))
    if downsample > 1:
        return _identity, _identity
    return bipartite_merge(q, width, height, int(q.shape[1] * ratio), generator)


class TomePatch:
    """The attn1_patch / attn1_output_patch pair of one TomePatchModel: the patch merges the
    queries and keeps the matching unmerge for the output patch that follows it."""

    def __init__(self, ratio: float):
        self.ratio = ratio
        self.unmerge: Callable = _identity

    def attn1_patch(self, q, k, v, extra_options):
        gen = extra_options.get("tome_generator")
        merge, self.unmerge = tome_functions(q, self.ratio, extra_options["original_shape"], gen)
        return merge(q), k, v

    def attn1_output_patch(self, n, extra_options):
        return self.unmerge(n)


def tome_run_wrapper(executor, options: dict, info: dict):
    """The "outer_sample" wrapper: a CPU generator in the state ComfyUI's global one has when
    sampling starts (seeded with the seed, then the noise of the latent's shape drawn from it)."""
    g = torch.Generator(device="cpu").manual_seed(int(info["seed"]))
    torch.randn(info["noise_shape"], generator=g)
    options = dict(options)
    options["transformer_options"] = {**options["transformer_options"], "tome_generator": g}
    return executor(options, info)
