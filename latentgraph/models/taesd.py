"""The TAESD decoder (Tiny AutoEncoder for Stable Diffusion, madebyollin): a small conv net
that turns a latent in the sampler's scaled space into RGB, for step previews.

The module is the published ``taesd_decoder`` file's ``nn.Sequential`` itself, so its
state-dict keys are the file's keys (``1.weight``, ``3.conv.0.weight``, ..., ``19.bias``) with
no prefix, as ComfyUI loads ``vae_approx/taesd_decoder.*``; loading is strict. The width (64 in
the published files) and the latent channels are read from the weights, so a narrower decoder
in the same layout (the demo model's) loads too.

Layout: Clamp, conv(C -> w), ReLU, then three stages of (3 Blocks, 2x nearest Upsample,
conv without bias), one more Block and conv(w -> 3). A Block is conv-ReLU-conv-ReLU-conv plus
its input (a 1x1 conv without bias when the widths differ, never in the decoder), then ReLU.
The output is the picture in 0..1 (clamped here).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError

LATENT_CHANNELS = 4  # what latentgraph's families (SD1, SD2, SDXL) have
FIRST = "1.weight"  # conv(C -> width): its shape gives both


def conv(n_in: int, n_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, bias=bias)


class Clamp(nn.Module):
    """Soft clamp of the latent to -3..3."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class Block(nn.Module):
    """Three 3x3 convs with ReLUs between, added to the input, then ReLU."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.conv = nn.Sequential(conv(n_in, n_out), nn.ReLU(), conv(n_out, n_out), nn.ReLU(), conv(n_out, n_out))
        self.skip = nn.Conv2d(n_in, n_out, 1, bias=False) if n_in != n_out else nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(self.conv(x) + self.skip(x))


class TAESDDecoder(nn.Sequential):
    """Latent (B, C, h, w) in the sampler's space -> picture (B, 3, 8h, 8w) in 0..1."""

    def __init__(self, latent_channels: int = LATENT_CHANNELS, width: int = 64):
        layers: list[nn.Module] = [Clamp(), conv(latent_channels, width), nn.ReLU()]
        for _ in range(3):
            layers += [Block(width, width), Block(width, width), Block(width, width),
                       nn.Upsample(scale_factor=2), conv(width, width, bias=False)]
        layers += [Block(width, width), conv(width, 3)]
        super().__init__(*layers)
        self.latent_channels, self.width = latent_channels, width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).clamp(0.0, 1.0)


def decoder_shape(sd: dict[str, torch.Tensor], path: str | Path) -> tuple[int, int]:
    """(latent channels, width) of a decoder state dict, from its first conv; a clear error
    naming the file when the keys are not the published taesd_decoder layout."""
    first = sd.get(FIRST)
    if first is None or first.ndim != 4 or tuple(first.shape[2:]) != (3, 3):
        some = ", ".join(sorted(sd)[:4]) or "none"
        raise CheckpointError(f"{path}: not a TAESD decoder: expected the published taesd_decoder layout "
                              f"(keys 1.weight, 3.conv.0.weight, ..., 19.weight with no prefix); found keys {some}, ...")
    width, channels = int(first.shape[0]), int(first.shape[1])
    if channels != LATENT_CHANNELS:
        raise CheckpointError(f"{path}: a TAESD decoder for {channels}-channel latents (taesd3/taef1 are for "
                              f"SD3 and Flux); latentgraph's families have {LATENT_CHANNELS}-channel latents")
    return channels, width


def decoder_from_state_dict(sd: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> TAESDDecoder:
    """A TAESDDecoder holding ``sd`` (strict: every key, no more, no less), in float32."""
    channels, width = decoder_shape(sd, path)
    decoder = TAESDDecoder(channels, width)
    try:
        decoder.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:400]
        raise CheckpointError(f"{path}: not a TAESD decoder of width {width} in the published layout ({detail})") from None
    return decoder.float().eval().requires_grad_(False)


def load_taesd_decoder(path: str | Path) -> TAESDDecoder:
    """A decoder from a ``vae_approx`` file: safetensors, or a plain-tensor pickle
    (``taesd_decoder.pth``) read only with ``torch.load(weights_only=True)``."""
    from .checkpoint import read_state_dict

    sd, _ = read_state_dict(path)
    return decoder_from_state_dict(sd, path)
