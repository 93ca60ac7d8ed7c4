"""Model-patch nodes that work on the UNet's attention and blocks: SelfAttentionGuidance,
PerturbedAttentionGuidance, PatchModelAddDownscale (Kohya Deep Shrink) and HyperTile.

Names, inputs, defaults and numerics are ComfyUI's (comfy_extras/nodes_sag.py, nodes_pag.py,
nodes_model_downscale.py, nodes_hypertile.py), built on the patch layer of
docs/model-options.md: each node clones its MODEL and sets attention replacements, attention
or block patches and post-CFG functions on the clone.
"""

from __future__ import annotations

import math
import zlib
from typing import Annotated

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import MODEL, Boolean, Combo, Float, Int, node
attention = lazy("..models.unet", "attention")
_guidance = lazy("..sampling.guidance")  # UNCOND, an int: read where used
calc_cond_batch = lazy("..sampling.guidance", "calc_cond_batch")
from .budget import check_tensor
from .latent import upscale_latent
from .sd import SDModel

SAG_KERNEL = 9  # ComfyUI's Gaussian kernel width for SAG's blur
SAG_THRESHOLD = 1.0  # a key token is "attended" when the mean head's column sum exceeds this
DOWNSCALE_METHODS = ("bicubic", "nearest-exact", "bilinear", "area", "bislerp")


# -- shared helpers --------------------------------------------------------------------------
def _extra_call(model, prompt, x: torch.Tensor, sigma: torch.Tensor, model_options: dict,
                who: str) -> torch.Tensor:
    """One more prediction of ``prompt`` at (x, sigma) from inside a post-CFG function, as
    ComfyUI's calc_cond_batch(model, [prompt], ...) (the chunk is labelled 0, "cond")."""
    if model is None or not hasattr(model, "apply_model"):
        raise ValueError(f"{who}: the sampler gave its post-CFG function no model to call")
    if prompt is None:
        raise ValueError(f"{who}: the sampler gave its post-CFG function no prompt to evaluate")
    (out,) = calc_cond_batch(model.apply_model, [prompt], x, sigma, model_options)
    return out


def _with_attn1_replace(model_options: dict, fn, block_name: str, number: int) -> dict:
    """``model_options`` with an attn1 replacement added for one call, leaving the given dicts
    as they are (what ComfyUI's set_model_options_patch_replace does)."""
    opts = dict(model_options)
    to = dict(opts.get("transformer_options", {}))
    replace = dict(to.get("patches_replace", {}))
    attn1 = dict(replace.get("attn1", {}))
    attn1[(block_name, number)] = fn
    replace["attn1"], to["patches_replace"], opts["transformer_options"] = attn1, replace, to
    return opts


# -- Self-Attention Guidance -----------------------------------------------------------------
def attention_with_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention that also returns its weights: q, k, v (B, T, heads*dim) ->
    out (B, T, heads*dim) and weights (B*heads, T, S), batch-major as ComfyUI keeps them."""
    b, t, inner = q.shape
    dim = inner // heads
    q, k, v = (x.unflatten(-1, (heads, dim)).transpose(1, 2).reshape(b * heads, -1, dim) for x in (q, k, v))
    weights = (torch.bmm(q, k.transpose(1, 2)) * dim ** -0.5).softmax(dim=-1)  # (B*heads, T, S)
    out = torch.bmm(weights.to(v.dtype), v)  # (B*heads, T, dim)
    return out.reshape(b, heads, t, dim).transpose(1, 2).reshape(b, t, inner), weights


def gaussian_blur_2d(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian (applied as one 2D kernel per channel) over (B, C, H, W), with
    reflected edges; sigma 0 is no blur (ComfyUI's formula divides by it and gives NaN)."""
    if sigma == 0:
        return img
    half = (kernel_size - 1) * 0.5
    t = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (t / sigma).pow(2))
    k1 = (pdf / pdf.sum()).to(device=img.device, dtype=img.dtype)
    kernel = torch.mm(k1[:, None], k1[None, :]).expand(img.shape[-3], 1, kernel_size, kernel_size)
    img = F.pad(img, [kernel_size // 2] * 4, mode="reflect")
    return F.conv2d(img, kernel, groups=img.shape[-3])


def _map_rows(total: int, lh: int, lw: int, shape: tuple[int, int] | None) -> int:
    """Rows of the middle block's token grid: ComfyUI's search for a divisor of ``total`` near
    sqrt(total * lh / lw) (kept so results match it), else the shape the UNet reported."""
    guess = round(math.sqrt((lh / lw) * total))
    for i in range(math.floor(math.sqrt(total) / 2)):
        for j in (guess + i, max(1, guess - i)):
            if total % j == 0:
                return j
    if shape is None or shape[0] * shape[1] != total:
        raise ValueError(f"SelfAttentionGuidance: cannot lay out {total} attention tokens as a grid "
                         f"for a {lh}x{lw} latent")
    return shape[0]


def create_blur_map(x0: torch.Tensor, scores: torch.Tensor, sigma: float, threshold: float,
                    shape: tuple[int, int] | None = None) -> torch.Tensor:
    """x0 (B, C, h, w) blurred where the uncond self-attention weights (B*heads, T, T) say a
    token is much attended to, unchanged elsewhere (the SAG paper's adversarial blur)."""
    _, hw1, hw2 = scores.shape
    b, _, lh, lw = x0.shape
    # mean over heads, then the column sums: how much attention each key token receives
    mask = scores.reshape(b, -1, hw1, hw2).mean(1).sum(1) > threshold  # (B, T)
    rows = _map_rows(hw2, lh, lw, shape)
    mask = mask.reshape(b, rows, hw2 // rows).unsqueeze(1).to(scores.dtype)
    mask = F.interpolate(mask, (lh, lw))  # nearest, to latent size
    blurred = gaussian_blur_2d(x0, SAG_KERNEL, sigma)
    return blurred * mask + x0 * (1 - mask)


def _sag_patches(scale: float, blur_sigma: float):
    """The middle block's attn1 replacement that records the negative prompt's attention
    weights, and the post-CFG function that uses them."""
    recorded: dict = {}  # the last model call's uncond weights and token grid, consumed per step

    def attn_and_record(q, k, v, extra_options):
        heads, labels = extra_options["n_heads"], extra_options["cond_or_uncond"]
        if _guidance.UNCOND not in labels:  # e.g. SAG's own extra call
            return attention(q, k, v, heads)
        out, weights = attention_with_scores(q, k, v, heads)
        per_chunk = heads * (q.shape[0] // len(labels))  # batch is chunked per label, heads inside
        i = labels.index(_guidance.UNCOND)
        recorded["scores"] = weights[per_chunk * i:per_chunk * (i + 1)]
        recorded["shape"] = tuple(extra_options.get("activations_shape", (0, 0, 0, 0))[2:])
        return out

    def post_cfg(args):
        cfg_result = args["denoised"]
        if min(cfg_result.shape[2:]) <= 4:  # too small for the blur's reflected padding (ComfyUI skips too)
            return cfg_result
        scores = recorded.pop("scores", None)
        if scores is None:  # the negative prompt was not run this step (no active entry): nothing to guide by
            return cfg_result
        uncond_pred, x = args["uncond_denoised"], args["input"]
        degraded = create_blur_map(uncond_pred, scores, blur_sigma, SAG_THRESHOLD, recorded.pop("shape", None))
        degraded_noised = degraded + x - uncond_pred
        sag = _extra_call(args["model"], args["uncond"], degraded_noised, args["sigma"], args["model_options"],
                          "SelfAttentionGuidance")
        return cfg_result + (degraded - sag) * scale

    return attn_and_record, post_cfg


@node(category="_for_testing", display_name="Self-Attention Guidance", outputs=[MODEL], experimental=True,
      python_module="comfy_extras.nodes_sag")
def SelfAttentionGuidance(
    model: Annotated[SDModel, MODEL],
    scale: Annotated[float, Float(0.5, min=-2.0, max=5.0, step=0.01)],
    blur_sigma: Annotated[float, Float(2.0, min=0.0, max=10.0, step=0.1)],
) -> SDModel:
    """Self-attention guidance (Hong et al. 2022): blurs the negative prediction where the
    middle block's self-attention concentrates, runs the model again on it and pushes away
    from the result. The negative prompt is run even at cfg 1."""
    attn_and_record, post_cfg = _sag_patches(scale, blur_sigma)
    m = model.clone()
    m.set_model_sampler_post_cfg_function(post_cfg, disable_cfg1_optimization=True)
    m.set_model_attn1_replace(attn_and_record, "middle", 0, 0)
    return m


# -- Perturbed-Attention Guidance -------------------------------------------------------------
def identity_attention(q, k, v, extra_options):
    """Self-attention replaced by the identity map: each token gets its own value."""
    return v


@node(category="model_patches/unet", outputs=[MODEL], python_module="comfy_extras.nodes_pag")
def PerturbedAttentionGuidance(
    model: Annotated[SDModel, MODEL],
    scale: Annotated[float, Float(3.0, min=0.0, max=100.0, step=0.01, round=0.01)],
) -> SDModel:
    """Perturbed-attention guidance (Ahn et al. 2024): runs the positive prompt again with the
    middle block's self-attention made the identity and pushes away from that prediction."""

    def post_cfg(args):
        cfg_result = args["denoised"]
        if scale == 0:
            return cfg_result
        opts = _with_attn1_replace(args["model_options"], identity_attention, "middle", 0)
        pag = _extra_call(args["model"], args["cond"], args["input"], args["sigma"], opts,
                          "PerturbedAttentionGuidance")
        return cfg_result + (args["cond_denoised"] - pag) * scale

    m = model.clone()
    m.set_model_sampler_post_cfg_function(post_cfg)
    return m


# -- Deep Shrink ----------------------------------------------------------------------------
@node(category="model_patches/unet", display_name="PatchModelAddDownscale (Kohya Deep Shrink)", outputs=[MODEL],
      python_module="comfy_extras.nodes_model_downscale")
def PatchModelAddDownscale(
    model: Annotated[SDModel, MODEL],
    block_number: Annotated[int, Int(3, min=1, max=32, step=1)],
    downscale_factor: Annotated[float, Float(2.0, min=0.1, max=9.0, step=0.001)],
    start_percent: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.001)],
    end_percent: Annotated[float, Float(0.35, min=0.0, max=1.0, step=0.001)],
    downscale_after_skip: Annotated[bool, Boolean(True)],
    downscale_method: Annotated[str, Combo(DOWNSCALE_METHODS, default="bicubic")],
    upscale_method: Annotated[str, Combo(DOWNSCALE_METHODS, default="bicubic")],
) -> SDModel:
    """Kohya's Deep Shrink: while sigma is within the start..end range, shrink the features
    after input block ``block_number`` by ``downscale_factor`` and grow them back to the skip's
    size in the output blocks, so a big image keeps a small image's composition."""
    sigma_start = model.schedule.percent_to_sigma(start_percent)
    sigma_end = model.schedule.percent_to_sigma(end_percent)

    def input_block_patch(h, transformer_options):
        if transformer_options["block"][1] != block_number:
            return h
        sigma = transformer_options["sigmas"][0].item()
        if not sigma_end <= sigma <= sigma_start:
            return h
        width = round(h.shape[-1] * (1.0 / downscale_factor))
        height = round(h.shape[-2] * (1.0 / downscale_factor))
        what = (f"PatchModelAddDownscale: downscale_factor {downscale_factor} on input block {block_number}'s "
                f"{h.shape[-1]}x{h.shape[-2]} features")
        if width < 1 or height < 1:
            raise ValueError(f"{what} leaves {width}x{height}; use a smaller factor or an earlier block")
        check_tensor((*h.shape[:2], height, width), what, "a feature map", h.dtype)
        return upscale_latent(h, width, height, downscale_method)

    def output_block_patch(h, hsp, transformer_options):
        if h.shape[-2:] != hsp.shape[-2:]:  # back to the skip's size before they are concatenated
            h = upscale_latent(h, hsp.shape[-1], hsp.shape[-2], upscale_method)
        return h, hsp

    m = model.clone()
    if downscale_after_skip:
        m.set_model_input_block_patch_after_skip(input_block_patch)
    else:
        m.set_model_input_block_patch(input_block_patch)
    m.set_model_output_block_patch(output_block_patch)
    return m


# -- HyperTile ------------------------------------------------------------------------------
def _divisor_choices(value: int, min_value: int, max_options: int) -> list[int]:
    """Tile counts along one axis: value // d for the divisors d >= min_value (smallest d
    first, i.e. most tiles first), the first ``max_options`` of them. As in ComfyUI, a random
    pick never takes the last of several (torch.randint's high is exclusive)."""
    min_value = min(min_value, value)
    ns = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    return ns[:-1] if len(ns) > 1 else ns


def _pick(choices: list[int], seed: int) -> int:
    """One of ``choices``: ComfyUI draws from torch's unseeded global generator; here a
    generator seeded from the step and the layer makes the same workflow give the same image."""
    if len(choices) == 1:
        return choices[0]
    g = torch.Generator(device="cpu").manual_seed(seed)
    return choices[int(torch.randint(0, len(choices), (1,), generator=g))]


def _tile_seed(extra_options: dict, axis: int) -> int:
    sigma = extra_options.get("sigmas")
    s = float(sigma.reshape(-1)[0]) if isinstance(sigma, torch.Tensor) else 0.0
    key = f"{s!r}/{extra_options.get('transformer_index', 0)}/{extra_options.get('block_index', 0)}/{axis}"
    return zlib.crc32(key.encode())


def _hypertile_patches(tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
    latent_tile = max(32, tile_size) // 8
    key = "hypertile_tiles"  # where the input patch leaves the tiling for the output patch

    def hypertile_in(n, context, value, extra_options):
        tokens = n.shape[-2]
        shape = extra_options["original_shape"]  # the UNet input (B, C, H, W)
        sizes = [(shape[-2] / 2 ** i) * (shape[-1] / 2 ** i) for i in range(max_depth + 1)]
        if tokens not in sizes:
            return n, context, value
        aspect = shape[-1] / shape[-2]
        # ComfyUI's grid: "h" = round(sqrt(T * W/H)) lengthwise, a reshape of the token order
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** sizes.index(tokens) if scale_depth else 1
        nh = _pick(_divisor_choices(h, latent_tile * factor, swap_size), _tile_seed(extra_options, 0))
        nw = _pick(_divisor_choices(w, latent_tile * factor, swap_size), _tile_seed(extra_options, 1))
        if nh * nw <= 1:
            return n, context, value
        b, c = n.shape[0], n.shape[-1]
        # (b, nh*h' * nw*w', c) -> (b*nh*nw, h'*w', c): each tile's queries in one batch entry
        n = n.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, -1, c)
        # ComfyUI tiles only the queries; its attention then reads the untiled keys and values
        # with the tiled batch size, so tile i attends to the i-th run of T/(nh*nw) consecutive
        # tokens. That reshape is made here, explicitly, so the result is ComfyUI's.
        context, value = (t.reshape(b * nh * nw, -1, t.shape[-1]) for t in (context, value))
        extra_options[key] = (nh, nw, h, w)
        return n, context, value

    def hypertile_out(n, extra_options):
        tiles = extra_options.pop(key, None)
        if tiles is None:
            return n
        nh, nw, h, w = tiles
        b, c = n.shape[0] // (nh * nw), n.shape[-1]
        n = n.reshape(b, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
        return n.reshape(b, h * w, c)

    return hypertile_in, hypertile_out


@node(category="model_patches/unet", outputs=[MODEL], python_module="comfy_extras.nodes_hypertile")
def HyperTile(
    model: Annotated[SDModel, MODEL],
    tile_size: Annotated[int, Int(256, min=1, max=2048)],
    swap_size: Annotated[int, Int(2, min=1, max=128)],
    max_depth: Annotated[int, Int(0, min=0, max=10)],
    scale_depth: Annotated[bool, Boolean(False)],
) -> SDModel:
    """HyperTile (tfernd): self-attention in the top ``max_depth + 1`` levels runs per tile of
    about ``tile_size`` pixels, which is faster on big images. The tile grid is picked among
    ``swap_size`` options per step and layer, deterministically (ComfyUI picks at random)."""
    hypertile_in, hypertile_out = _hypertile_patches(tile_size, swap_size, max_depth, scale_depth)
    m = model.clone()
    m.set_model_attn1_patch(hypertile_in)
    m.set_model_attn1_output_patch(hypertile_out)
    return m
