"""T2I-Adapters (TencentARC) for SD1.x/SD2.x ("full" and "light") and SDXL: the networks, reading
their files, and the residuals they give the UNet's input side.

An adapter sees only the hint image: pixel-unshuffle (8x, 16x for SDXL) turns it into a
feature map at latent size (1/2 latent for SDXL), a stack of small ResNet blocks makes one
feature map per level, and each is added to the UNet's hidden state after the last block of its
level. Since nothing depends on the timestep or the latent, the features are computed once per
hint size and reused at every step. Attribute names mirror the published keys (``body.*``,
``conv_in``), so ``load_state_dict(strict=True)`` takes the files as they are; every size is read
from the tensors' shapes, as ComfyUI's loader does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError
from .latent import upscale_center


@dataclass(frozen=True)
class AdapterConfig:
    """An adapter's shape, all of it readable from its tensors."""

    variant: str  # full | light | xl
    cin: int  # channels after pixel-unshuffle: hint channels x unshuffle**2
    channels: tuple[int, ...]  # feature channels per level (4 levels)
    ksize: int = 1  # kernel of the full adapter's in_conv/block2 (1 in v1 files, 3 in v2/XL)
    use_conv: bool = False  # full/xl: a strided conv (down_opt.op) rather than average pooling
    nums_rb: int = 2  # blocks per level: 2 (full, xl), 4 (light)

    @property
    def unshuffle(self) -> int:
        return 16 if self.variant == "xl" else 8

    @property
    def hint_channels(self) -> int:
        return self.cin // (self.unshuffle * self.unshuffle)


def _avg_down(x: torch.Tensor) -> torch.Tensor:
    """2x2 average pooling; an odd side is padded (zeros counted, as in the reference code)."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[-2] % 2, x.shape[-1] % 2))


class _Down(nn.Module):
    """The strided 3x3 conv that halves a full adapter's map (key ``down_opt.op``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ResnetBlock(nn.Module):
    """A full adapter's block: [downsample], [in_conv when channels change], conv-ReLU-conv + x."""

    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int, use_conv: bool):
        super().__init__()
        self.down = down
        self.down_opt = _Down(in_c) if down and use_conv else None
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, ksize // 2) if in_c != out_c else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, ksize // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x) if self.down_opt is not None else _avg_down(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


class LightBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.act = nn.ReLU()
        self.block2 = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.act(self.block1(x)))


class Extractor(nn.Module):
    """A light adapter's level: [average pool], 1x1 in, light blocks at a quarter width, 1x1 out."""

    def __init__(self, in_c: int, inter_c: int, out_c: int, nums_rb: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(in_c, inter_c, 1)
        self.body = nn.Sequential(*[LightBlock(inter_c) for _ in range(nums_rb)])
        self.out_conv = nn.Conv2d(inter_c, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.body(self.in_conv(_avg_down(x) if self.down else x)))


class T2IAdapter(nn.Module):
    """Hint (B, C, H, W) with H, W multiples of the unshuffle -> one feature map per level."""

    def __init__(self, config: AdapterConfig):
        super().__init__()
        self.config = config
        ch, n = config.channels, config.nums_rb
        if config.variant == "light":
            self.body = nn.ModuleList([Extractor(config.cin if i == 0 else ch[i - 1], ch[i] // 4, ch[i], n, i > 0)
                                       for i in range(len(ch))])
            return
        self.conv_in = nn.Conv2d(config.cin, ch[0], 3, 1, 1)
        # SD1/SD2: levels 1-3 halve the map; SDXL (already at 1/2 latent): only level 2 does
        downs = (2,) if config.variant == "xl" else (1, 2, 3)
        blocks = []
        for i in range(len(ch)):
            for j in range(n):
                first = j == 0 and i > 0
                blocks.append(ResnetBlock(ch[i - 1] if first else ch[i], ch[i], first and i in downs,
                                          config.ksize, config.use_conv))
        self.body = nn.ModuleList(blocks)

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        x = F.pixel_unshuffle(hint, self.config.unshuffle)
        if self.config.variant == "light":
            feats = []
            for level in self.body:
                x = level(x)
                feats.append(x)
            return feats
        x = self.conv_in(x)
        feats, n = [], self.config.nums_rb
        for i in range(len(self.config.channels)):
            for block in self.body[i * n:(i + 1) * n]:
                x = block(x)
            feats.append(x)
        return feats

    def control(self, feats: list[torch.Tensor]) -> dict[str, list]:
        """Features -> ComfyUI's control dict. The UNet pops "input" from the end, one entry per
        input block; a feature sits where its level's last block is (None elsewhere)."""
        if self.config.variant == "xl":
            # SDXL input blocks 0..8: level features after blocks 3, 5 and 8; the last goes to the middle
            order = [None, None, None, feats[0], None, feats[1], None, None, feats[2]]
            return {"input": order[::-1], "middle": [feats[3]]}
        # SD1/SD2 input blocks 0..11: after blocks 2, 5, 8 and 11
        order = [x for f in feats for x in (None, None, f)]
        return {"input": order[::-1]}


# -- files ----------------------------------------------------------------------------------
def is_t2i_adapter(sd: dict) -> bool:
    return ("conv_in.weight" in sd and "body.0.block1.weight" in sd) or "body.0.in_conv.weight" in sd \
        or "adapter.body.0.resnets.0.block1.weight" in sd


def _from_diffusers(sd: dict) -> dict:
    """diffusers' T2IAdapter names -> the original ones (adapter.body.{i}.resnets.{j} is block
    2i+j; adapter.body.{i}.downsample/in_conv belong to block 2i)."""
    out = {}
    for key, value in sd.items():
        name = key.removeprefix("adapter.")
        parts = name.split(".")
        if parts[0] == "body" and len(parts) > 3 and parts[2] == "resnets":
            name = ".".join(["body", str(int(parts[1]) * 2 + int(parts[3]))] + parts[4:])
        elif parts[0] == "body":
            name = ".".join(["body", str(int(parts[1]) * 2)] + parts[2:])
        out[name] = value
    return out


def config_from_state_dict(sd: dict, source: str = "") -> AdapterConfig:
    """The adapter's variant and sizes from its tensors (ComfyUI's rules: light has
    ``body.0.in_conv``; a full adapter with 256 or 768 input channels is SDXL's)."""
    try:
        if "body.0.in_conv.weight" in sd:
            levels = sorted({int(k.split(".")[1]) for k in sd if k.startswith("body.")})
            channels = tuple(sd[f"body.{i}.out_conv.weight"].shape[0] for i in levels)
            nums_rb = len({k.split(".")[3] for k in sd if k.startswith("body.0.body.")})
            return AdapterConfig("light", sd["body.0.in_conv.weight"].shape[1], channels, nums_rb=nums_rb)
        cin, c = sd["conv_in.weight"].shape[1], sd["conv_in.weight"].shape[0]
        ksize = sd["body.0.block2.weight"].shape[2]
    except KeyError as exc:
        raise CheckpointError(f"{source}: T2I-Adapter layout not understood: tensor {exc} is missing") from None
    use_conv = any(k.endswith("down_opt.op.weight") for k in sd)
    variant = "xl" if cin in (256, 768) else "full"
    return AdapterConfig(variant, cin, (c, c * 2, c * 4, c * 4), ksize, use_conv)


def build_t2i_adapter(sd: dict, source: str, dtype: torch.dtype = torch.float32) -> T2IAdapter:
    """A T2I-Adapter from a file's tensors, strictly loaded, in ``dtype``."""
    if "adapter.body.0.resnets.0.block1.weight" in sd:
        sd = _from_diffusers(sd)
    config = config_from_state_dict(sd, source)
    if config.cin % (config.unshuffle ** 2):
        raise CheckpointError(f"{source}: T2I-Adapter input channels {config.cin} are not a multiple of "
                              f"{config.unshuffle}x{config.unshuffle} (the pixel-unshuffle)")
    with torch.device("meta"):
        net = T2IAdapter(config)
    try:
        net.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: T2I-Adapter tensors do not fit the layout read from them "
                              f"({config.variant}, channels {list(config.channels)}): {exc}") from None
    return net.to(dtype).eval().requires_grad_(False)


# -- control at sampling time ---------------------------------------------------------------
def adapter_hint(hint: torch.Tensor, config: AdapterConfig, latent_h: int, latent_w: int) -> torch.Tensor:
    """The hint at 8x the latent's size rounded up to the unshuffle, centre-cropped then resized
    nearest-exact; averaged to grey for a 1-channel adapter (ComfyUI's T2IAdapter)."""

    u = config.unshuffle
    out = upscale_center(hint.float(), math.ceil(latent_w * 8 / u) * u, math.ceil(latent_h * 8 / u) * u)
    if config.hint_channels == 1 and out.shape[1] > 1:
        out = out.mean(dim=1, keepdim=True)
    return out


def adapter_control(control, x: torch.Tensor, chunks: int) -> dict[str, list]:
    """The residuals of ``control`` (a Control whose net is a T2IAdapter) for a model call on x:
    computed once per latent size and batch and kept in the control's cache."""
    from .controlnet import broadcast_hint

    net: T2IAdapter = control.net
    weight = next(net.parameters())
    key = ("t2i", x.shape[0], chunks, x.shape[-2], x.shape[-1], x.device)
    if key not in control._cache:
        control._cache.clear()
        if weight.device != x.device:  # low-memory mode keeps weights on the CPU until they run
            net.to(x.device)
        hint = adapter_hint(control.hint, net.config, x.shape[-2], x.shape[-1]).to(x.device, weight.dtype)
        hint = broadcast_hint(hint, x.shape[0], chunks)
        control._cache[key] = net.control(net(hint))
    return {k: list(v) for k, v in control._cache[key].items()}


def adapter_tensors(net: T2IAdapter) -> dict[str, torch.Tensor]:
    """The published layout of an adapter's weights (contiguous copies, ready to save)."""
    return {k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}
