"""The Stable Diffusion UNet (LDM "openaimodel" layout) for SD1.x, SD2.x and SDXL.

Attribute names mirror the original checkpoint keys under ``model.diffusion_model.``, so
``UNetModel(config).load_state_dict(sd, strict=True)`` takes a real file's tensors with only
that prefix removed. Empty ``nn.Identity`` slots stand where the original has a dropout, so
the numbered keys (``out_layers.3``, ``ff.net.2``) line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import JsonConfig
from .cpu_kernels import Conv2d, is_channels_last
from .patcher import is_patched

_PER_LEVEL = ("channel_mult", "num_res_blocks", "transformer_depth")


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """The shape of one UNet; the defaults are SD1.5."""

    in_channels: int = 4  # latent channels in (9 for inpainting models)
    out_channels: int = 4  # eps / v prediction channels out
    model_channels: int = 320  # width of level 0; the time embedding is 4x this
    channel_mult: tuple = (1, 2, 4, 4)  # width of each level, in units of model_channels
    num_res_blocks: tuple = (2, 2, 2, 2)  # ResBlocks per level on the input side (output side has one more)
    transformer_depth: tuple = (1, 1, 1, 0)  # transformer blocks after each input ResBlock, per level (0 = none)
    # transformer blocks in the middle block, ComfyUI's numbers: >= 0 for ResBlock, transformer,
    # ResBlock; -1 for a lone ResBlock (SSD-1B, Vega); -2 for no middle block at all (KOALA-700M)
    transformer_depth_middle: int = 1
    # transformer blocks per output block, listed as ComfyUI lists them: from the last
    # output block (level 0) back to output_blocks.0, i.e. in the input side's level order
    transformer_depth_output: tuple = (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0)
    context_dim: int = 768  # width of the text conditioning (cross-attention keys/values)
    num_heads: int = 8  # fixed head count (SD1); -1 when num_head_channels is used
    num_head_channels: int = -1  # fixed head width (SD2/SDXL: 64); -1 when num_heads is used
    use_linear_in_transformer: bool = False  # proj_in/proj_out are Linear (SD2/SDXL), not 1x1 convs (SD1)
    adm_in_channels: int | None = None  # width of the SDXL vector conditioning y; None for no label_emb

    def __post_init__(self):
        levels = len(self.channel_mult)
        for name in _PER_LEVEL:  # an int means "the same at every level"; lists become tuples
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) * levels if isinstance(value, int) else tuple(value))
        object.__setattr__(self, "transformer_depth_output", tuple(self.transformer_depth_output))
        for name in _PER_LEVEL[1:]:
            if len(getattr(self, name)) != levels:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, channel_mult has {levels}")
        n_out = sum(self.num_res_blocks) + levels
        if len(self.transformer_depth_output) != n_out:
            raise ValueError(f"transformer_depth_output needs {n_out} entries (one per output block), "
                             f"got {len(self.transformer_depth_output)}")
        if (self.num_heads == -1) == (self.num_head_channels == -1):
            raise ValueError(f"set exactly one of num_heads ({self.num_heads}) and num_head_channels "
                             f"({self.num_head_channels}); the other must be -1")
        if self.transformer_depth_middle < -2:
            raise ValueError(f"transformer_depth_middle must be >= -2 (-1: a lone ResBlock, -2: no middle block), "
                             f"got {self.transformer_depth_middle}")

    @classmethod
    def sd15(cls) -> "UNetConfig":
        return cls()

    @classmethod
    def sd2(cls) -> "UNetConfig":
        return cls(context_dim=1024, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True)

    @classmethod
    def sdxl(cls) -> "UNetConfig":
        return cls(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=(2, 2, 2), transformer_depth=(0, 2, 10),
                   transformer_depth_middle=10, transformer_depth_output=(0, 0, 0, 2, 2, 2, 10, 10, 10),
                   context_dim=2048, num_heads=-1, num_head_channels=64, use_linear_in_transformer=True,
                   adm_in_channels=2816)

    @classmethod
    def sdxl_refiner(cls) -> "UNetConfig":
        return cls(model_channels=384, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
                   transformer_depth=(0, 4, 4, 0), transformer_depth_middle=4,
                   transformer_depth_output=(0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0), context_dim=1280, num_heads=-1,
                   num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=2560)

    def heads(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer of width ``channels``."""
        if self.num_head_channels != -1:
            return channels // self.num_head_channels, self.num_head_channels
        return self.num_heads, channels // self.num_heads



def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim) float32, cos half first (LDM order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def GroupNorm32(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm with 32 groups, computed in the input's dtype."""
    return nn.GroupNorm(32, channels, eps=eps)


# -- blocks ---------------------------------------------------------------------------------
class ResBlock(nn.Module):
    """Two 3x3 convs with the time embedding added in between, plus a skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Identity(),
                                        Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)  # (B, out, H, W)
        h = h + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """3x3 conv with stride 2 (odd sizes round up)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 (or to the skip's size, for odd latents), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled dot-product attention on projected tokens: q (B, T, heads*dim) over k, v
    (B, S, heads*dim) -> (B, T, heads*dim). The UNet's own attention; an ``attn1``/``attn2``
    replacement that calls it gives the unpatched result bit for bit."""
    q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))  # (B, heads, T, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, T, dim)
    return out.transpose(1, 2).flatten(2)


class CrossAttention(nn.Module):
    """Multi-head attention of x over context (self-attention when context is None)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.dim_head = heads, head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                value: torch.Tensor | None = None) -> torch.Tensor:
        """``value`` defaults to the context (an attn patch may give keys and values apart)."""
        context = x if context is None else context
        value = context if value is None else value
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(value)  # (B, T, inner), (B, S, inner)
        return self.to_out(attention(q, k, v, self.heads))  # (B, T, query_dim)


class GEGLU(nn.Module):
    """Linear to twice the width; the second half, through GELU, gates the first."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention over the text, GEGLU feed-forward."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, head_dim)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, to: dict | None = None) -> torch.Tensor:
        if to is not None:  # a patched model: ComfyUI's call points (docs/model-options.md)
            return self._forward_patched(x, context, to)
        return self._forward_plain(x, context)

    def _forward_plain(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The unpatched block (what --compile regional compiles: models/compile.py)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))

    def _forward_patched(self, x: torch.Tensor, context: torch.Tensor, to: dict) -> torch.Tensor:
        patches, replace = to.get("patches", {}), to.get("patches_replace", {})
        # what every patch here receives: the transformer options without the patches themselves
        extra = {k: v for k, v in to.items() if k != "patches" and k != "patches_replace"}
        extra.update(n_heads=self.attn1.heads, dim_head=self.attn1.dim_head, attn_precision=None)
        block = to.get("block")
        keys = (block,) if block is None else ((block[0], block[1], to.get("block_index", 0)), block)
        n = self._attend(self.attn1, self.norm1(x), None, patches.get("attn1_patch"), replace.get("attn1"),
                         keys, extra)
        for p in patches.get("attn1_output_patch", ()):
            n = p(n, extra)
        x = x + n
        for p in patches.get("middle_patch", ()):
            x = p(x, extra)
        n = self._attend(self.attn2, self.norm2(x), context, patches.get("attn2_patch"), replace.get("attn2"),
                         keys, extra)
        for p in patches.get("attn2_output_patch", ()):
            n = p(n, extra)
        x = x + n
        return x + self.ff(self.norm3(x))

    @staticmethod
    def _attend(attn: CrossAttention, n: torch.Tensor, context: torch.Tensor | None, patches: list | None,
                replacements: dict | None, keys: tuple, extra: dict) -> torch.Tensor:
        """One attention with its ``attnN_patch`` list (on q input, keys, values) and its
        replacement (on projected q, k, v), the (block, id, index) key before (block, id)."""
        value = None
        if patches:
            context = n if context is None else context
            value = context
            for p in patches:
                n, context, value = p(n, context, value, extra)
        replacement = None
        if replacements:
            replacement = next((replacements[k] for k in keys if k in replacements), None)
        if replacement is None:
            return attn(n, context, value)
        context = n if context is None else context
        value = context if value is None else value
        return attn.to_out(replacement(attn.to_q(n), attn.to_k(context), attn.to_v(value), extra))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the pixels of a feature map, with a residual around them."""

    def __init__(self, channels: int, context_dim: int, heads: int, head_dim: int, depth: int, linear: bool):
        super().__init__()
        inner = heads * head_dim
        self.linear = linear
        self.norm = GroupNorm32(channels, eps=1e-6)  # LDM's Normalize: eps 1e-6 here, unlike the ResBlocks
        self.proj_in = nn.Linear(channels, inner) if linear else Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, context_dim, heads, head_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if linear else Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, to: dict | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        if to is not None:
            to["activations_shape"] = list(x.shape)
        h = self.norm(x)
        if not self.linear:
            h = self.proj_in(h)
        # One copy here (none for a channels_last map): reshape of the permuted NCHW map is a
        # strided view, and every LayerNorm and residual add of the blocks would copy it again.
        h = h.permute(0, 2, 3, 1).reshape(B, H * W, -1).contiguous()  # (B, T, C)
        if self.linear:
            h = self.proj_in(h)
        for i, block in enumerate(self.transformer_blocks):
            if to is not None:
                to["block_index"] = i
            h = block(h, context, to)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(B, H, W, -1).permute(0, 3, 1, 2)  # (B, C, H, W), strided as channels_last
        if not self.linear:
            # back to x's layout before the conv: mixing layouts makes every later op transpose
            channels_last = is_channels_last(x)
            h = self.proj_out(h.contiguous(memory_format=torch.channels_last if channels_last else
                                           torch.contiguous_format))
        return x + h


class TimestepBlock(nn.ModuleList):
    """One numbered entry of input_blocks / middle_block / output_blocks: hands each layer
    what it takes (the time embedding, the context, the skip's size)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                size: torch.Size | None = None, to: dict | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, to)
                if to is not None:  # counts the spatial transformers of the whole forward
                    to["transformer_index"] = to.get("transformer_index", 0) + 1
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


# -- the network ----------------------------------------------------------------------------
class UNetModel(nn.Module):
    """eps/v prediction from a noisy latent, its timestep, the text context and (SDXL) a vector y."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        mc, emb_dim = c.model_channels, c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = None
        if c.adm_in_channels is not None:  # SDXL "sequential" class conditioning
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            return SpatialTransformer(ch, c.context_dim, *c.heads(ch), depth, c.use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([TimestepBlock([Conv2d(c.in_channels, mc, 3, padding=1)])])
        skip_chans, ch = [mc], mc
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, mc * mult)]
                ch = mc * mult
                if c.transformer_depth[level] > 0:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepBlock(layers))
                skip_chans.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock([Downsample(ch)]))
                skip_chans.append(ch)

        self.middle_block = None  # KOALA-700M: none (-2)
        if c.transformer_depth_middle >= -1:
            middle = [ResBlock(ch, emb_dim, ch)]
            if c.transformer_depth_middle >= 0:
                middle += [transformer(ch, c.transformer_depth_middle), ResBlock(ch, emb_dim, ch)]
            self.middle_block = TimestepBlock(middle)

        depth_out = list(c.transformer_depth_output)  # popped from the end: last entry = output_blocks.0
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks[level] + 1):
                layers = [ResBlock(ch + skip_chans.pop(), emb_dim, mc * mult)]
                ch = mc * mult
                depth = depth_out.pop()
                if depth > 0:
                    layers.append(transformer(ch, depth))
                if level > 0 and i == c.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), Conv2d(mc, c.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control: dict | None = None,
                transformer_options: dict | None = None) -> torch.Tensor:
        """x (B, C, H, W), timesteps (B,), context (B, T, context_dim), y (B, adm) -> (B, out_channels, H, W).

        ``control``: ComfyUI's residuals, {"input"|"middle"|"output": [tensor or None, ...]},
        each list consumed from its end, one per block in order. ``transformer_options``: a
        per-call dict (it is written to) holding ``patches``/``patches_replace`` and what the
        patches read (docs/model-options.md); without patches the unpatched path runs."""
        if (y is not None) != (self.label_emb is not None):
            raise ValueError("y (the vector conditioning) must be given exactly when the UNet has label_emb "
                             f"(adm_in_channels={self.config.adm_in_channels})")
        to = transformer_options if is_patched(transformer_options) else None
        patches = to.get("patches", {}) if to is not None else {}
        if to is not None:
            to["original_shape"], to["transformer_index"] = list(x.shape), 0
        control = {k: list(v) for k, v in control.items()} if control else None  # popped here, not the caller's
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))  # (B, 4*mc)
        for p in patches.get("emb_patch", ()):
            emb = p(emb, self.config.model_channels, to)
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        in_patch, skip_patch = patches.get("input_block_patch", ()), patches.get("input_block_patch_after_skip", ())
        hs, h = [], x
        for i, block in enumerate(self.input_blocks):
            if to is not None:
                to["block"] = ("input", i)
            h = block(h, emb, context, None, to)
            h = _apply_control(h, control, "input", i)
            for p in in_patch:
                h = p(h, to)
            hs.append(h)
            for p in skip_patch:
                h = p(h, to)
        if to is not None:
            to["block"] = ("middle", 0)
        if self.middle_block is not None:
            h = self.middle_block(h, emb, context, None, to)
        h = _apply_control(h, control, "middle", 0)  # even without a middle block, as ComfyUI
        out_patch = patches.get("output_block_patch", ())
        for i, block in enumerate(self.output_blocks):
            if to is not None:
                to["block"] = ("output", i)
            skip = _apply_control(hs.pop(), control, "output", i)
            for p in out_patch:
                h, skip = p(h, skip, to)
            h = torch.cat([h, skip], dim=1)
            # an Upsample ends this block: grow to the next skip's size (odd sizes were rounded up going down)
            h = block(h, emb, context, hs[-1].shape[-2:] if hs else None, to)
        return self.out(h)


def _apply_control(h: torch.Tensor, control: dict | None, name: str, index: int) -> torch.Tensor:
    """Add the next residual of control[name] (from the list's end, as ComfyUI) to h."""
    if control is None or not control.get(name):
        return h
    residual = control[name].pop()
    if residual is None:
        return h
    if residual.shape[1:] != h.shape[1:] or residual.shape[0] not in (1, h.shape[0]):
        # ComfyUI logs and skips a misfit; a picture without its control is a wrong picture
        raise ValueError(f"control residual for the {name} block {index} has shape {tuple(residual.shape)}, "
                         f"the block's output has {tuple(h.shape)}")
    return h + residual.to(h)


# -- reading the architecture from a state dict ----------------------------------------------
def _shape(sd: dict, key: str) -> tuple:
    if key not in sd:
        raise KeyError(f"UNet tensor {key!r} is missing")
    return tuple(sd[key].shape)


def _transformers(sd: dict) -> tuple[dict[tuple[str, int], int], int | None, bool]:
    """Transformer blocks per (part, block index), context width, linear proj_in: from key names."""
    depths: dict[tuple[str, int], int] = {}
    context_dim, linear = None, False
    for key in sd:
        p = key.split(".")
        if p[0] in ("input_blocks", "output_blocks") and len(p) > 4 and p[3] == "transformer_blocks":
            part, n, k = p[0], int(p[1]), int(p[4])
        elif p[0] == "middle_block" and len(p) > 3 and p[2] == "transformer_blocks":
            part, n, k = p[0], int(p[1]), int(p[3])
        else:
            continue
        depths[part, n] = max(depths.get((part, n), 0), k + 1)
        if context_dim is None and key.endswith("attn2.to_k.weight"):
            context_dim = _shape(sd, key)[1]
            linear = len(_shape(sd, key.split("transformer_blocks.")[0] + "proj_in.weight")) == 2
    return depths, context_dim, linear


def _levels(sd: dict, depths: dict, mc: int) -> tuple[tuple, tuple, tuple]:
    """(channel_mult, num_res_blocks, transformer_depth) from walking input_blocks: ResBlocks
    (maybe with a transformer) make up a level, a Downsample or the end closes it."""
    channel_mult, num_res_blocks, transformer_depth = [], [], []
    n, level_depths, mult = 1, [], 0
    while True:
        if f"input_blocks.{n}.0.in_layers.0.weight" in sd:
            level_depths.append(depths.get(("input_blocks", n), 0))
            mult = _shape(sd, f"input_blocks.{n}.0.out_layers.3.weight")[0] // mc
            n += 1
            continue
        if not level_depths:  # a level always starts with a ResBlock
            break
        if len(set(level_depths)) != 1:
            raise ValueError(f"level {len(channel_mult)} has different transformer depths {level_depths} "
                             "in its ResBlocks; only one depth per level is supported")
        channel_mult.append(mult)
        num_res_blocks.append(len(level_depths))
        transformer_depth.append(level_depths[0])
        level_depths = []
        if f"input_blocks.{n}.0.op.weight" not in sd:
            break
        n += 1
    if not channel_mult:
        raise ValueError("no ResBlocks under input_blocks")
    return tuple(channel_mult), tuple(num_res_blocks), tuple(transformer_depth)


def _middle_depth(sd: dict, depths: dict) -> int:
    """ComfyUI's transformer_depth_middle from the keys: the transformer's depth (ResBlock,
    transformer, ResBlock), -1 for a lone ResBlock (SSD-1B, Vega), -2 for none (KOALA-700M)."""
    if "middle_block.1.proj_in.weight" in sd:
        if "middle_block.2.in_layers.0.weight" not in sd:
            raise ValueError("middle_block.1 is a transformer but middle_block.2 is not a ResBlock")
        return depths.get(("middle_block", 1), 0)
    if any(k.startswith(("middle_block.1.", "middle_block.2.")) for k in sd):
        raise ValueError("middle_block.1 is not a transformer (no middle_block.1.proj_in.weight); the middle block "
                         "must be ResBlock-transformer-ResBlock, a lone ResBlock, or absent")
    return -1 if "middle_block.0.in_layers.0.weight" in sd else -2


def unet_config_from_state_dict(sd: dict, num_heads: int | None = None,
                                num_head_channels: int | None = None) -> UNetConfig:
    """The UNetConfig of a state dict (keys without ``model.diffusion_model.``), from key names
    and shapes only (tensors or anything with ``.shape``). The head count is not visible: 8 heads
    for conv proj_in (SD1), 64-wide heads for linear proj_in (SD2/SDXL), unless given."""
    mc, in_channels = _shape(sd, "input_blocks.0.0.weight")[:2]
    depths, context_dim, linear = _transformers(sd)
    channel_mult, num_res_blocks, transformer_depth = _levels(sd, depths, mc)
    n_out = sum(num_res_blocks) + len(channel_mult)
    last, extra = f"output_blocks.{n_out - 1}.0.in_layers.0.weight", f"output_blocks.{n_out}.0.in_layers.0.weight"
    if last not in sd or extra in sd:
        raise ValueError(f"expected {n_out} output blocks for {len(channel_mult)} levels of {num_res_blocks} ResBlocks")
    middle = _middle_depth(sd, depths)
    if num_head_channels not in (None, -1):
        heads = dict(num_heads=-1, num_head_channels=num_head_channels)
    elif num_heads not in (None, -1):
        heads = dict(num_heads=num_heads, num_head_channels=-1)
    else:
        heads = dict(num_heads=-1, num_head_channels=64) if linear else dict(num_heads=8, num_head_channels=-1)
    return UNetConfig(
        in_channels=in_channels, out_channels=_shape(sd, "out.2.weight")[0], model_channels=mc,
        channel_mult=channel_mult, num_res_blocks=num_res_blocks, transformer_depth=transformer_depth,
        transformer_depth_middle=middle,
        transformer_depth_output=tuple(depths.get(("output_blocks", j), 0) for j in reversed(range(n_out))),
        context_dim=context_dim if context_dim is not None else UNetConfig.context_dim,
        use_linear_in_transformer=linear, num_heads=heads["num_heads"], num_head_channels=heads["num_head_channels"],
        adm_in_channels=_shape(sd, "label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in sd else None)
