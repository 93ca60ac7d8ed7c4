"""GLIGEN (grounded text-to-image, SD1.x "textbox" files): a position net that turns boxes and
their phrases' pooled CLIP outputs into object tokens, and a gated self-attention ("fuser")
per UNet transformer block that mixes those tokens into the image tokens.

The published layout (gligen_sd14_textbox_pruned): ``position_net.*`` and
``{input_blocks,middle_block,output_blocks}.<i>.1.transformer_blocks.0.fuser.*``. The module
tree below mirrors those keys, so a file loads with ``strict=True`` and no renaming.

At sampling a conditioning entry's boxes become a ``middle_patch`` (docs/model-options.md):
after each transformer block's self-attention, the fuser numbered ``transformer_index`` runs on
the image tokens, as ComfyUI applies it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .unet import CrossAttention, FeedForward

MAX_OBJS = 30  # boxes per conditioning entry (the position net's fixed token count)
FOURIER_FREQS = 8  # sin and cos of 4 box coordinates at 8 frequencies -> 64 features
POSITION_HIDDEN = 512  # the position net's hidden width (fixed in the published files)
METADATA_KEY = "latentgraph.gligen"  # tiny files say their head count (ComfyUI's rule needs 768-wide text)
_FUSER = re.compile(r"^((input_blocks|middle_block|output_blocks)\.(\d+))\..*\.fuser\.")


class GatedSelfAttention(nn.Module):
    """Self-attention over [image tokens; object tokens], gated by tanh(alpha), then a gated
    feed-forward; the gates start at 0 so an untrained fuser changes nothing."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, query_dim, heads, head_dim)
        self.ff = FeedForward(query_dim)
        self.norm1, self.norm2 = nn.LayerNorm(query_dim), nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        # x (B, T, query_dim), objs (B, MAX_OBJS, context_dim)
        n_visual = x.shape[1]
        tokens = torch.cat([x, self.linear(objs)], dim=1)  # (B, T + MAX_OBJS, query_dim)
        x = x + torch.tanh(self.alpha_attn) * self.attn(self.norm1(tokens))[:, :n_visual]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def fourier_features(boxes: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """(..., 4) -> (..., 8 * freqs): sin and cos of each coordinate per frequency, frequency-major."""
    bands = temperature ** (torch.arange(freqs) / freqs)
    return torch.cat([f(band * boxes) for band in bands for f in (torch.sin, torch.cos)], dim=-1)


class PositionNet(nn.Module):
    """(boxes, masks, phrase embeddings) -> object tokens; padding slots get learnt null features."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        position_dim = FOURIER_FREQS * 2 * 4
        self.linears = nn.Sequential(nn.Linear(in_dim + position_dim, POSITION_HIDDEN), nn.SiLU(),
                                     nn.Linear(POSITION_HIDDEN, POSITION_HIDDEN), nn.SiLU(),
                                     nn.Linear(POSITION_HIDDEN, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        # boxes (B, N, 4) in [0, 1], masks (B, N), embeddings (B, N, in_dim) -> (B, N, out_dim)
        m = masks.unsqueeze(-1)
        xyxy = fourier_features(boxes)
        embeddings = embeddings * m + (1 - m) * self.null_positive_feature.view(1, 1, -1)
        xyxy = xyxy * m + (1 - m) * self.null_position_feature.view(1, 1, -1)
        return self.linears(torch.cat([embeddings, xyxy], dim=-1))


def _heads(query_dim: int, key_dim: int, heads: int | None) -> tuple[int, int]:
    """(heads, head_dim): ComfyUI's rule (8 heads for SD1's 768-wide text, else 64-wide heads)
    unless the file says its head count."""
    if heads is None:
        heads = 8 if key_dim == 768 else query_dim // 64
    if heads < 1 or query_dim % heads:
        raise ValueError(f"a fuser {query_dim} wide cannot have {heads} attention heads")
    return heads, query_dim // heads


class GLIGEN(nn.Module):
    """The position net and the fusers, kept at the checkpoint's key paths; ``fusers`` lists
    them in UNet order (input blocks, middle, output blocks), indexed by ``transformer_index``."""

    def __init__(self, sd: dict[str, torch.Tensor], heads: int | None = None):
        super().__init__()
        if "position_net.null_positive_feature" not in sd or "position_net.linears.4.weight" not in sd:
            raise ValueError("no position_net.* weights: not a GLIGEN textbox file")
        self.in_dim = sd["position_net.null_positive_feature"].shape[0]
        self.key_dim = sd["position_net.linears.4.weight"].shape[0]
        self.position_net = PositionNet(self.in_dim, self.key_dim)
        prefixes = {m.group(1): (m.group(2), int(m.group(3))) for k in sd if (m := _FUSER.match(k))}
        order = ("input_blocks", "middle_block", "output_blocks")
        self.fusers = []  # a plain list: the modules are registered once, at their key paths
        for prefix in sorted(prefixes, key=lambda p: (order.index(prefixes[p][0]), prefixes[p][1])):
            paths = sorted({k.split(".fuser.")[0] for k in sd if k.startswith(prefix + ".") and ".fuser." in k})
            for path in paths:
                linear = sd[f"{path}.fuser.linear.weight"]  # (query_dim, key_dim)
                fuser = GatedSelfAttention(linear.shape[0], linear.shape[1], *_heads(*linear.shape, heads))
                self._place(path + ".fuser", fuser)
                self.fusers.append(fuser)
        if not self.fusers:
            raise ValueError("no *.fuser.* weights: not a GLIGEN textbox file")

    def _place(self, path: str, module: nn.Module) -> None:
        """Register ``module`` under a dotted path, making ModuleDicts on the way."""
        *parents, last = path.split(".")
        parent: nn.Module = self
        for name in parents:
            child = parent._modules.get(name)
            if child is None:
                child = nn.ModuleDict()
                parent.add_module(name, child)
            parent = child
        parent.add_module(last, module)

    def position_patch(self, shape: torch.Size, boxes: list[tuple]) -> "callable":
        """A ``middle_patch`` for a latent of ``shape`` (B, C, h, w) and ``boxes``: (pooled (1, D),
        h, w, y, x) in latent pixels, as GLIGENTextBoxApply stores them."""
        batch, _, h, w = shape
        if len(boxes) > MAX_OBJS:
            raise ValueError(f"GLIGEN takes at most {MAX_OBJS} boxes per conditioning entry, got {len(boxes)}")
        xyxy = torch.zeros(MAX_OBJS, 4)
        masks = torch.zeros(MAX_OBJS)
        embeddings = torch.zeros(MAX_OBJS, self.key_dim)
        for i, (pooled, bh, bw, by, bx) in enumerate(boxes):
            if pooled.numel() != self.in_dim:
                raise ValueError(f"a GLIGEN box phrase is {pooled.numel()} wide; this GLIGEN takes "
                                 f"{self.in_dim}-wide pooled text (SD1.x CLIP)")
            xyxy[i] = torch.tensor((bx / w, by / h, (bx + bw) / w, (by + bh) / h))
            masks[i] = 1.0
            embeddings[i] = pooled.reshape(-1).float().cpu()
        p = next(self.position_net.parameters())
        with torch.no_grad():
            objs = self.position_net(*(t.unsqueeze(0).repeat(batch, *([1] * t.ndim)).to(p) for t in
                                       (xyxy, masks, embeddings)))  # (B, MAX_OBJS, key_dim)
        return self._patch(objs)

    def _patch(self, objs: torch.Tensor):
        fusers = self.fusers

        def gligen_middle_patch(x: torch.Tensor, extra_options: dict) -> torch.Tensor:
            i = extra_options["transformer_index"]
            if i >= len(fusers) or fusers[i].linear.out_features != x.shape[-1]:
                width = fusers[i].linear.out_features if i < len(fusers) else None
                raise ValueError(f"this GLIGEN does not fit the model: its {len(fusers)} fusers do not match "
                                 f"transformer #{i} ({x.shape[-1]} wide, fuser: {width})")
            weight = fusers[i].linear.weight
            if weight.device != x.device or weight.dtype != x.dtype:  # the GLIGEN follows the UNet
                self.to(device=x.device, dtype=x.dtype)
            with torch.no_grad():
                return fusers[i](x, objs.to(device=x.device, dtype=x.dtype))

        return gligen_middle_patch


def load_gligen_file(path: str | Path, dtype: torch.dtype = torch.float32) -> GLIGEN:
    """A GLIGEN from a safetensors (or .pth/.ckpt) file; every key must load (errors name the file)."""
    from .checkpoint import read_state_dict, strict_load  # checkpoint imports the whole model zoo

    sd, metadata = read_state_dict(path)
    try:
        heads = json.loads(metadata[METADATA_KEY])["heads"] if METADATA_KEY in metadata else None
        model = GLIGEN(sd, heads)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: cannot load as a GLIGEN: {exc}") from None
    strict_load(model, sd, "GLIGEN", str(path), dtype)
    return model.eval()
