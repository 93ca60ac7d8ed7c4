"""The Stable Diffusion VAE (LDM AutoencoderKL), shared by SD1.x, SD2.x and SDXL.

Attribute names mirror the original checkpoint keys under ``first_stage_model.`` (and the
unprefixed keys of standalone VAE files), so ``AutoencoderKL(config).load_state_dict(sd,
strict=True)`` takes a real file's tensors with only that prefix removed. Latents are
unscaled: the family's latent scale (0.18215, 0.13025) is applied by the sampler, not here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import JsonConfig

VAE_KEY_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass(frozen=True)
class VAEConfig(JsonConfig):
    """The shape of one AutoencoderKL; the defaults are the SD1/SD2/SDXL VAE."""

    ch: int = 128  # width of level 0 (the full-resolution level)
    ch_mult: tuple = (1, 2, 4, 4)  # width of each level in units of ch; each level after the first halves H and W
    num_res_blocks: int = 2  # ResnetBlocks per encoder level (the decoder has one more per level)
    z_channels: int = 4  # channels between the encoder/decoder and the quant convs
    embed_dim: int = 4  # latent channels (what the sampler sees)
    in_channels: int = 3  # image channels into the encoder
    out_ch: int = 3  # image channels out of the decoder
    double_z: bool = True  # encoder outputs mean and logvar (2 * z_channels); AutoencoderKL needs this

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))  # JSON lists become tuples
        if not self.ch_mult:
            raise ValueError("ch_mult must have at least one level")
        if self.ch % 32 or any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"every level width ch * ch_mult must be a multiple of 32 (GroupNorm groups); "
                             f"got ch {self.ch}, ch_mult {list(self.ch_mult)}")

    @classmethod
    def sd(cls) -> "VAEConfig":
        """The VAE of SD1.x, SD2.x and SDXL (same shape; SDXL's weights differ)."""
        return cls()



def Normalize(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups and eps 1e-6, as the LDM VAE uses everywhere."""
    return nn.GroupNorm(32, channels, eps=1e-6)


# -- blocks ---------------------------------------------------------------------------------
def _fresh(x: torch.Tensor) -> bool:
    """Whether x, just made by the caller's previous op, may be overwritten: not when autograd
    keeps it (training, or gradients through the VAE). In place, a 512² decode skips 30
    allocations of up to 134 MB and their page faults (9.1 -> 8.7 s on this 2-core machine)."""
    return not (torch.is_grad_enabled() and x.requires_grad)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x, inplace=_fresh(x))


def _cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """channels_last on the CPU: oneDNN's convolutions over the VAE's wide, many-pixel maps run
    faster in it (a 512² decode 8.7 -> 7.6 s on this 2-core machine; last-bit differences, 1e-6
    relative). Every layer keeps the layout; the results are made contiguous again."""
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.dim() == 4 else x


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a skip (a 1x1 conv when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = Normalize(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = Normalize(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))  # (B, out, H, W)
        h = self.conv2(_swish(self.norm2(h)))
        return h.add_(self.nin_shortcut(x)) if _fresh(h) else self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, with 1x1-conv projections."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = Normalize(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Some converted files store these projections as Linear weights (C, C); a 1x1 conv
        # is the same matrix with two trailing unit dims. load_state_dict works on a copy of
        # the caller's dict, so this does not change the caller's tensors.
        for name in ("q", "k", "v", "proj_out"):
            key = f"{prefix}{name}.weight"
            w = state_dict.get(key)
            if w is not None and w.ndim == 2:
                state_dict[key] = w.reshape(*w.shape, 1, 1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)

        def tokens(conv: nn.Conv2d) -> torch.Tensor:
            return conv(h).reshape(B, 1, C, H * W).transpose(2, 3).contiguous()  # (B, 1, HW, C)

        out = F.scaled_dot_product_attention(tokens(self.q), tokens(self.k), tokens(self.v))  # (B, 1, HW, C)
        out = out.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad one pixel on the right and bottom only, then a 3x3 stride-2 conv (H -> floor(H/2))."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the lowest resolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    """One resolution level: ResnetBlocks, then an optional resampler (`downsample`/`upsample`)."""

    def __init__(self, widths: list[int], resample: str | None):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o) for i, o in zip(widths[:-1], widths[1:]))
        if resample == "down":
            self.downsample = Downsample(widths[-1])
        elif resample == "up":
            self.upsample = Upsample(widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


# -- encoder / decoder ----------------------------------------------------------------------
class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> moments (B, 2*z, H/f, W/f), f = 2 ** (levels - 1)."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.in_channels, c.ch, 3, padding=1)
        self.down = nn.ModuleList()
        prev = c.ch
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            self.down.append(Level([prev] + [w] * c.num_res_blocks, None if last else "down"))
            prev = w
        self.mid = MidBlock(prev)
        self.norm_out = Normalize(prev)
        self.conv_out = nn.Conv2d(prev, 2 * c.z_channels if c.double_z else c.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, ch, H, W)
        for level in self.down:
            h = level(h)
        h = self.mid(h)  # (B, ch*ch_mult[-1], H/f, W/f)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """z (B, z_channels, h, w) -> image (B, out_ch, h*f, w*f)."""

    def __init__(self, c: VAEConfig):
        super().__init__()
        widths = [c.ch * m for m in c.ch_mult]
        self.conv_in = nn.Conv2d(c.z_channels, widths[-1], 3, padding=1)
        self.mid = MidBlock(widths[-1])
        # up.{i} is level i (up.0 at full resolution), like the encoder's down.{i}; the decoder
        # runs them from the last to up.0. Level i takes the width of level i+1 as its input.
        ins = widths[1:] + widths[-1:]
        self.up = nn.ModuleList(Level([ins[i]] + [w] * (c.num_res_blocks + 1), "up" if i else None)
                                for i, w in enumerate(widths))
        self.norm_out = Normalize(widths[0])
        self.conv_out = nn.Conv2d(widths[0], c.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))  # (B, ch*ch_mult[-1], h, w)
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(_swish(self.norm_out(h)))  # (B, out_ch, h*f, w*f)


# -- the autoencoder ------------------------------------------------------------------------
class AutoencoderKL(nn.Module):
    """Encoder, decoder and the two 1x1 quant convs; encode returns the posterior mean."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        if not config.double_z:
            raise ValueError("AutoencoderKL needs double_z=True: its encoder outputs a mean and a logvar")
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)

    @property
    def downscale(self) -> int:
        """Pixels per latent along each axis (8 for SD)."""
        return 2 ** (len(self.config.ch_mult) - 1)

    @property
    def dtype(self) -> torch.dtype:
        return self.quant_conv.weight.dtype

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> posterior mean (B, embed_dim, H/f, W/f), unscaled.
        Sizes that are not multiples of f round down."""
        moments = self.quant_conv(self.encoder(_cpu_layout(x.to(self.dtype)))).contiguous()  # (B, 2*embed, H/f, W/f)
        return moments[:, :self.config.embed_dim]  # the mean; ComfyUI returns the mode, not a sample

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent (B, embed_dim, h, w), unscaled -> raw decoder output (B, 3, h*f, w*f), roughly
        [-1, 1] and not clamped."""
        return self.decoder(_cpu_layout(self.post_quant_conv(z.to(self.dtype)))).contiguous()

    def encode_tiled(self, x: torch.Tensor, tile: int = 512, overlap: int = 64) -> torch.Tensor:
        """encode() over pixel tiles of at most tile x tile, one at a time; latents are blended
        with linear feathers over the overlaps. tile and overlap must be multiples of f."""
        # Each tile gets its own GroupNorm statistics and attention context (as in ComfyUI's
        # tiled VAE), so the result is close to encode() only where tiles look like the whole.
        f = self.downscale
        if tile % f or overlap % f:
            raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of the VAE's downscale {f}")
        B, _, H, W = x.shape
        out_size = (B, self.config.embed_dim, H // f, W // f)
        return _tiled(self.encode, x, out_size, tile, overlap, align=f, scale=1 / f)

    def decode_tiled(self, z: torch.Tensor, tile: int = 64, overlap: int = 8) -> torch.Tensor:
        """decode() over latent tiles of at most tile x tile, one at a time; pixels are blended
        with linear feathers over the overlaps."""
        f = self.downscale
        B, _, h, w = z.shape
        return _tiled(self.decode, z, (B, self.config.out_ch, h * f, w * f), tile, overlap, align=1, scale=f)


# -- tiling ---------------------------------------------------------------------------------
def _tile_starts(length: int, tile: int, overlap: int, align: int) -> list[int]:
    """Start offsets of tiles of at most `tile` that cover [0, length), neighbours overlapping by
    at least `overlap`, every start a multiple of `align` (the last tile may be shorter)."""
    if length <= tile:
        return [0]
    last = -(-(length - tile) // align) * align  # rounded up to align, so the last tile stays <= tile
    return list(range(0, last, tile - overlap)) + [last]


def _feather(n: int, ramp: float, at_start: bool, at_end: bool) -> torch.Tensor:
    """(n,) weights: 1 inside, rising linearly over `ramp` samples from each side that meets a neighbour."""
    pos = torch.arange(n, dtype=torch.float32) + 0.5
    w = torch.ones(n)
    if ramp > 0 and at_start:
        w = torch.minimum(w, pos / ramp)
    if ramp > 0 and at_end:
        w = torch.minimum(w, (n - pos) / ramp)
    return w


def _tiled(fn, x: torch.Tensor, out_size: tuple, tile: int, overlap: int, align: int, scale: float) -> torch.Tensor:
    """Run fn on tiles of x (B, C, H, W) and blend its outputs into a tensor of out_size; an input
    offset s maps to output offset s * scale."""
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile {tile}, overlap {overlap}")
    H, W = x.shape[-2:]
    ys, xs = _tile_starts(H, tile, overlap, align), _tile_starts(W, tile, overlap, align)
    out = torch.zeros(out_size, dtype=torch.float32, device=x.device)  # (B, C_out, H_out, W_out)
    total = torch.zeros(out_size[-2:], dtype=torch.float32, device=x.device)
    ramp, dtype = overlap * scale, x.dtype
    for y in ys:
        for x0 in xs:
            y_out = fn(x[..., y:y + tile, x0:x0 + tile])  # (B, C_out, th, tw)
            dtype, y_out = y_out.dtype, y_out.float()
            th, tw = y_out.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            wy = _feather(th, ramp, y > 0, oy + th < out_size[-2])
            wx = _feather(tw, ramp, x0 > 0, ox + tw < out_size[-1])
            weight = (wy[:, None] * wx[None, :]).to(x.device)  # (th, tw)
            out[..., oy:oy + th, ox:ox + tw] += y_out * weight
            total[oy:oy + th, ox:ox + tw] += weight
            del y_out
    return (out / total).to(dtype)  # the dtype fn returns


# -- files ----------------------------------------------------------------------------------
def vae_keys(sd: dict, prefix: str = "") -> dict:
    """The VAE's tensors from sd (those under prefix + encoder./decoder./quant_conv./post_quant_conv.),
    prefix removed; EMA copies, loss weights and everything else are left out."""
    out = {}
    for k, v in sd.items():
        if k.startswith(prefix) and k[len(prefix):].startswith(VAE_KEY_PREFIXES):
            out[k[len(prefix):]] = v
    return out


def _shape(sd: dict, key: str) -> tuple:
    if key not in sd:
        raise ValueError(f"not a VAE state dict: '{key}' is missing (keys must have no prefix; use vae_keys())")
    return tuple(sd[key].shape)


def _count(sd: dict, prefix: str) -> int:
    """How many numbered children 'prefix{i}.' there are."""
    return len({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})


def vae_config_from_state_dict(sd: dict) -> VAEConfig:
    """Infer the VAEConfig from unprefixed key names and shapes (values need only a .shape)."""
    ch, in_channels = _shape(sd, "encoder.conv_in.weight")[:2]
    levels = _count(sd, "encoder.down.")
    if levels == 0:
        raise ValueError("not a VAE state dict: no encoder.down.* keys")
    num_res_blocks = _count(sd, "encoder.down.0.block.")
    ch_mult = tuple(_shape(sd, f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels))
    z_channels = _shape(sd, "decoder.conv_in.weight")[1]
    embed_dim = _shape(sd, "post_quant_conv.weight")[1]
    out_ch = _shape(sd, "decoder.conv_out.weight")[0]
    enc_out = _shape(sd, "encoder.conv_out.weight")[0]
    if enc_out not in (z_channels, 2 * z_channels):
        raise ValueError(f"encoder.conv_out has {enc_out} channels, expected z_channels {z_channels} or twice that")
    dec_blocks = _count(sd, "decoder.up.0.block.")
    if _count(sd, "decoder.up.") != levels or dec_blocks != num_res_blocks + 1:
        raise ValueError(f"decoder does not mirror the encoder: {levels} encoder levels with {num_res_blocks} "
                         f"blocks, {_count(sd, 'decoder.up.')} decoder levels with {dec_blocks} blocks")
    return VAEConfig(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels,
                     embed_dim=embed_dim, in_channels=in_channels, out_ch=out_ch, double_z=enc_out == 2 * z_channels)
