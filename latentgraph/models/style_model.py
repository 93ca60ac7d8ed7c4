"""Style models (STYLE_MODEL): TencentARC's T2I "style adapter" (``t2iadapter_style_sd14v1``).

A small transformer reads a CLIP vision ``last_hidden_state`` (ViT-L/14: 257 tokens, 1024 wide)
together with learnt style tokens and returns those tokens projected to the UNet's context
width (8 x 768 for SD1.x); StyleModelApply appends them to every conditioning entry's text tokens.

The published layout, mirrored by the modules below so a file loads strictly with no renaming:
``style_embedding`` (1, tokens, width), ``ln_pre``, ``transformer_layes.<i>.{attn.in_proj_*,
attn.out_proj.*, ln_1, mlp.c_fc, mlp.c_proj, ln_2}`` ("layes" is the original spelling),
``ln_post``, ``proj`` (width, context) used as ``x @ proj``. Widths, token and layer counts come
from the shapes; the head count (8 in the published file) cannot, so files we write say it in
their metadata. Flux Redux files (``redux_up``/``redux_down``) are refused: they are for Flux.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .clip_vision import ClipVisionOutput
from .config import JsonConfig
from .errors import CheckpointError

METADATA_KEY = "latentgraph.style_model"  # StyleAdapterConfig as JSON, in files we write
PUBLISHED_HEADS = 8


@dataclass(frozen=True)
class StyleAdapterConfig(JsonConfig):
    """The shape of one style adapter (defaults: the published SD1.x file)."""

    width: int = 1024  # the CLIP vision width it reads (ViT-L/14)
    context_dim: int = 768  # the UNet's cross-attention width
    num_heads: int = PUBLISHED_HEADS
    num_layers: int = 3
    num_tokens: int = 8  # style tokens added to the conditioning per image


class LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (the original casts there too, so fp16 files stay stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight.float(), self.bias.float()  # fp16/bf16 weights: the norm still runs in float32
        return nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """A pre-norm CLIP transformer block over (L, B, D) tokens (sequence first, as the original)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = LayerNorm32(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """CLIP vision tokens (B, T, width) -> style tokens (B, num_tokens, context_dim)."""

    def __init__(self, config: StyleAdapterConfig):
        super().__init__()
        c = config
        self.config = c
        self.transformer_layes = nn.Sequential(*[ResidualAttentionBlock(c.width, c.num_heads)
                                                 for _ in range(c.num_layers)])
        self.style_embedding = nn.Parameter(torch.empty(1, c.num_tokens, c.width))
        self.ln_post = LayerNorm32(c.width)
        self.ln_pre = LayerNorm32(c.width)
        self.proj = nn.Parameter(torch.empty(c.width, c.context_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.to(x).expand(x.shape[0], -1, -1)  # (B, n, width)
        x = self.ln_pre(torch.cat([x, style], dim=1))  # (B, T + n, width)
        x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)  # through (T + n, B, width)
        x = self.ln_post(x[:, -self.config.num_tokens:, :])
        return x @ self.proj.to(x)  # (B, n, context_dim)

    def get_cond(self, clip_vision_output: ClipVisionOutput) -> torch.Tensor:
        """The style tokens for each image of a CLIPVisionEncode output: (B, n, context_dim)."""
        hidden = clip_vision_output.last_hidden_state
        if hidden.shape[-1] != self.config.width:
            raise ValueError(f"clip_vision_output: this style model reads {self.config.width}-wide CLIP vision "
                             f"tokens, the output is {hidden.shape[-1]} wide (the published style adapter "
                             f"takes CLIP ViT-L/14, 1024 wide)")
        p = self.proj
        with torch.no_grad():
            return self(hidden.to(p.device, p.dtype)).to("cpu", torch.float32)


def config_from_keys(sd: dict, source: str, metadata: dict | None = None) -> StyleAdapterConfig:
    """A style adapter's config from its tensors (and our metadata's head count, if present)."""
    if any(k.startswith(("redux_up.", "redux_down.")) for k in sd):
        raise CheckpointError(f"{source}: a Flux Redux style model (redux_up/redux_down): it is for Flux, which "
                              f"latentgraph does not run; SD style models are T2I style adapters (style_embedding)")
    if any(k.startswith(("vision_model.", "visual.")) for k in sd):
        raise CheckpointError(f"{source}: a CLIP vision model, not a style model: it loads with CLIPVisionLoader "
                              f"from models/clip_vision")
    for key in ("style_embedding", "proj"):
        if key not in sd:
            raise CheckpointError(f"{source}: not a style model: no {key} tensor (a T2I style adapter has "
                                  f"style_embedding, proj, ln_pre, ln_post and transformer_layes.*); found "
                                  f"{len(sd)} keys such as {', '.join(sorted(sd)[:4])}")
    emb, proj = sd["style_embedding"], sd["proj"]
    if emb.ndim != 3 or proj.ndim != 2 or emb.shape[0] != 1 or emb.shape[2] != proj.shape[0]:
        raise CheckpointError(f"{source}: style_embedding {tuple(emb.shape)} and proj {tuple(proj.shape)} do not "
                              f"fit a style adapter ((1, tokens, width) and (width, context))")
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("transformer_layes.")}
    heads = PUBLISHED_HEADS
    if metadata and METADATA_KEY in metadata:
        try:
            heads = int(json.loads(metadata[METADATA_KEY])["num_heads"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: its {METADATA_KEY} metadata is unreadable: {exc}") from None
    width = emb.shape[2]
    if heads < 1 or width % heads:
        raise CheckpointError(f"{source}: a style adapter {width} wide cannot have {heads} attention heads")
    return StyleAdapterConfig(width, proj.shape[1], heads, max(layers) + 1 if layers else 0, emb.shape[1])


def load_style_model(sd: dict, source: str, metadata: dict | None = None,
                     dtype: torch.dtype | None = None) -> StyleAdapter:
    """A StyleAdapter from its tensors; every one must load (errors name ``source``)."""
    from .checkpoint import _build, strict_load  # checkpoint imports the model zoo

    config = config_from_keys(sd, source, metadata)
    model = _build("style model", source, lambda: StyleAdapter(config))
    strict_load(model, sd, "style model", source, dtype)
    return model.eval().requires_grad_(False)


def load_style_model_file(path: str | Path, dtype: torch.dtype | None = None) -> StyleAdapter:
    """A StyleAdapter from a file in style_models/ (safetensors, or a pickled state dict loaded safely)."""
    from .checkpoint import read_state_dict

    sd, metadata = read_state_dict(path)
    return load_style_model(sd, str(path), metadata, dtype)


def style_tensors(model: StyleAdapter) -> dict[str, torch.Tensor]:
    """The published layout's tensors (our module names are the file's)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


TINY = StyleAdapterConfig(64, 32, PUBLISHED_HEADS, 3, 8)  # reads the tiny CLIP vision (64 wide), tiny SD1 context


def random_style_adapter(config: StyleAdapterConfig, seed: int = 0) -> StyleAdapter:
    """torch's default initialisation under ``torch.manual_seed(seed)``; the style tokens and the
    projection as the original draws them (randn * width^-0.5); biases and norms drawn as
    clip_vision.random_clip_vision draws them, so a misplaced one changes the output."""
    torch.manual_seed(seed)
    model = StyleAdapter(config)
    scale = config.width ** -0.5
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.style_embedding.copy_(torch.randn(model.style_embedding.shape, generator=gen) * scale)
        model.proj.copy_(torch.randn(model.proj.shape, generator=gen) * scale)
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif ".ln_" in f".{name}" and name.endswith(".weight"):
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()
