"""Upscale models (ESRGAN, RealESRGAN, Compact, SwinIR, HAT, DAT, OmniSR, ... every architecture
spandrel detects) and the tiled upscaling ComfyUI's ImageUpscaleWithModel does.

The file is read by our own safe reader (checkpoint.read_state_dict: safetensors, or
torch.load(weights_only=True) with the same refusals as checkpoints); spandrel only ever sees a
dict of tensors, so it never unpickles anything itself.

Tiling is ComfyUI's (comfy.utils.tiled_scale, learned from its behaviour): tiles of ``tile``
input pixels that overlap by ``overlap``, each tile's output weighted by a linear ramp of
``round(scale * overlap)`` pixels at every edge, the sum divided by the summed weights. The tile
is chosen *before* anything runs from a memory budget (``pick_tile``) instead of ComfyUI's
catch-OOM-and-halve, so a 4x model on a 1024 x 1024 image never needs a 4096 x 4096 activation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import read_state_dict
from .errors import CheckpointError

TILE = 512          # ComfyUI's tile (input pixels) ...
OVERLAP = 32        # ... and overlap
MIN_TILE = 128      # ComfyUI gives up below this after halving on OOM; so do we
# ComfyUI's estimate of the activation memory of one tile: input bytes x scale x 384 ("an
# estimate of how much some of these models take"). A 512 tile of a 4x fp32 model: 4.5 GiB.
ACTIVATION_FACTOR = 384
# ComfyUI strips "module." (DataParallel) only from SwinIR-style files that carry this key
_SWINIR_DP_KEY = "module.layers.0.residual_group.blocks.0.norm1.weight"


def _spandrel():
    # imported on first use: spandrel pulls in torchvision and dozens of architectures
    import spandrel
    return spandrel


def load_upscale_model_file(path: str | Path):
    """A spandrel ``ImageModelDescriptor`` (in eval mode, float32, on the CPU) from a file."""
    sd, _ = read_state_dict(path)
    return load_upscale_state_dict(sd, str(path))


def load_upscale_state_dict(sd: dict[str, torch.Tensor], name: str):
    """The descriptor for a state dict; ``name`` is what errors call it (the file)."""
    spandrel = _spandrel()
    if not sd:
        raise CheckpointError(f"{name}: holds no tensors, so it is not an upscale model")
    if _SWINIR_DP_KEY in sd:
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except spandrel.UnsupportedModelError:
        raise CheckpointError(
            f"{name}: not an upscale model of an architecture spandrel {spandrel.__version__} knows "
            f"({len(sd)} tensors, first keys: {', '.join(sorted(sd)[:3])})") from None
    except (KeyError, RuntimeError, ValueError, AssertionError, IndexError) as exc:
        # a known architecture whose tensors do not fit it (truncated or edited file)
        detail = " ".join(str(exc).split())[:300]  # torch's load errors put the telling part on line 2
        raise CheckpointError(f"{name}: looks like an upscale model but does not load "
                              f"({type(exc).__name__}: {detail})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise CheckpointError(
            f"{name}: is a {desc.architecture.name} model ({type(desc).__name__}, e.g. inpainting), "
            f"not a single-image upscale model; ImageUpscaleWithModel takes only single-image models")
    return desc.eval()


def tile_steps(width: int, height: int, tile: int, overlap: int) -> int:
    """Tiles one image of width x height takes (what progress counts)."""
    rows = 1 if height <= tile else math.ceil((height - overlap) / (tile - overlap))
    cols = 1 if width <= tile else math.ceil((width - overlap) / (tile - overlap))
    return rows * cols


def tile_bytes(tile: int, scale: int, channels: int = 3, itemsize: int = 4) -> int:
    """ComfyUI's estimate of the activation memory one tile x tile input needs."""
    return tile * tile * channels * itemsize * max(scale, 1) * ACTIVATION_FACTOR


def pick_tile(scale: int, budget: int, channels: int = 3, itemsize: int = 4,
              start: int = TILE, floor: int = MIN_TILE) -> int:
    """The largest of start, start/2, start/4, ... (not below ``floor``) whose estimated
    activation memory fits ``budget`` bytes; None when even ``floor`` does not."""
    tile = start
    while tile >= floor:
        if tile_bytes(tile, scale, channels, itemsize) <= budget:
            return tile
        tile //= 2
    return None


def _positions(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(start, size) of the tiles along one axis: a stride of tile - overlap, the last one
    shortened to the edge (ComfyUI's placement, so the seams fall where its do)."""
    if length <= tile:
        return [(0, length)]
    return [(p, min(tile, length - p)) for p in range(0, length - overlap, tile - overlap)]


def _ramp(n: int, feather: int) -> torch.Tensor:
    """Weights along one axis of a tile's output: 1/f, 2/f, ... up to 1 at both ends, f = feather
    (none when the tile is not longer than the ramp)."""
    w = torch.ones(n)
    if feather >= n:
        return w
    for t in range(feather):
        a = (t + 1) / feather
        w[t] *= a
        w[n - 1 - t] *= a
    return w


def tiled_upscale(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, scale: int,
                  out_channels: int, tile: int = TILE, overlap: int = OVERLAP,
                  step: Callable[[], None] | None = None) -> torch.Tensor:
    """Run ``fn`` ((1, C, h, w) -> (1, out_channels, h*scale, w*scale)) over ``images``
    (B, C, H, W) in overlapping tiles; returns (B, out_channels, H*scale, W*scale) float32 on the
    CPU. ``step`` is called after every tile."""
    B, _, H, W = images.shape
    out = torch.empty(B, out_channels, H * scale, W * scale)
    feather = round(scale * overlap)
    for b in range(B):
        one = images[b:b + 1]
        if H <= tile and W <= tile:
            out[b:b + 1] = fn(one).float().cpu()
            if step:
                step()
            continue
        acc = torch.zeros(1, out_channels, H * scale, W * scale)
        weight = torch.zeros(1, 1, H * scale, W * scale)  # one channel: the weights are per pixel
        for y, h in _positions(H, tile, overlap):
            for x, w in _positions(W, tile, overlap):
                piece = fn(one[:, :, y:y + h, x:x + w]).float().cpu()  # (1, out, h*s, w*s)
                ph, pw = piece.shape[-2:]
                mask = _ramp(ph, feather)[:, None] * _ramp(pw, feather)[None, :]
                acc[:, :, y * scale:y * scale + ph, x * scale:x * scale + pw] += piece * mask
                weight[:, :, y * scale:y * scale + ph, x * scale:x * scale + pw] += mask
                if step:
                    step()
        out[b:b + 1] = acc / weight
    return out


def upscale_image(desc, image: torch.Tensor, device: torch.device, tile: int = TILE,
                  overlap: int = OVERLAP, step: Callable[[], None] | None = None) -> torch.Tensor:
    """IMAGE (B, H, W, C) in 0..1 -> IMAGE (B, H*s, W*s, out_channels) float32 in 0..1, with
    descriptor ``desc`` run on ``device`` tile by tile."""
    dtype = next(iter(desc.model.parameters()), torch.empty(0)).dtype

    def run(piece: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return desc(piece.to(device=device, dtype=dtype))

    x = image.movedim(-1, 1)
    s = tiled_upscale(run, x, int(desc.scale), int(desc.output_channels), tile, overlap, step)
    return s.movedim(1, -1).clamp(0, 1)


# -- tiny random models for tests and make-checkpoint ------------------------------------------
def _tiny_esrgan():
    from spandrel.architectures.ESRGAN import ESRGAN
    return ESRGAN(num_filters=8, num_blocks=1, scale=4)  # old-arch keys: model.0, model.1.sub.0.RDB1, ...


def _tiny_compact():
    from spandrel.architectures.Compact import Compact
    return Compact(num_feat=8, num_conv=2, upscale=2)  # body.0 ... body.N, PReLU


def _tiny_swinir():
    from spandrel.architectures.SwinIR import SwinIR
    return SwinIR(upscale=2, img_size=16, window_size=4, embed_dim=12, depths=[1], num_heads=[2],
                  mlp_ratio=2.0, upsampler="pixelshuffledirect", resi_connection="1conv")


TINY_UPSCALE_VARIANTS = {"esrgan": _tiny_esrgan, "compact": _tiny_compact, "swinir": _tiny_swinir}


def make_tiny_upscale_state_dict(variant: str = "esrgan", seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny random upscale model in its architecture's published key layout (spandrel detects it):
    esrgan (4x RRDBNet, 8 features, 1 block), compact (2x SRVGGNet, 8 features), swinir (2x).
    ESRGAN's last bias is raised by 0.5 so its outputs sit mid-range instead of being clamped to 0."""
    if variant not in TINY_UPSCALE_VARIANTS:
        raise ValueError(f"unknown upscale model variant {variant!r}; choose one of {', '.join(TINY_UPSCALE_VARIANTS)}")
    torch.manual_seed(seed)
    net = TINY_UPSCALE_VARIANTS[variant]()
    sd = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    if variant == "esrgan":
        # its last conv gives the image itself (the others add a residual to the input)
        last_bias = [k for k in sd if k.endswith(".bias")][-1]
        sd[last_bias] = sd[last_bias] + 0.5
    return sd
