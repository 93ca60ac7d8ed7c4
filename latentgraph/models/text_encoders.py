"""Text encoders: CLIP text transformers, read the way Stable Diffusion reads them.

The one place in latentgraph where checkpoint keys are mapped: SD1's CLIP-L is stored with
transformers' names under ``cond_stage_model.transformer.text_model.``; SD2's ViT-H and SDXL's
bigG are stored with OpenCLIP's names (fused ``in_proj`` attention, ``ln_final``, a
``text_projection`` matrix used as ``x @ P``) and are converted here.

Encoding follows ComfyUI so shared prompts mean the same: chunks of 77 tokens encoded as one
batch, weighted tokens moved away from the encoding of the empty prompt
(``(z - z_empty) * w + z_empty``), chunks joined along the token axis, pooled output from
the first chunk, clip skip by hidden-layer index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import JsonConfig

BOS, EOS = 49406, 49407


@dataclass(frozen=True)
class TextEncoderConfig(JsonConfig):
    """The shape of one CLIP text transformer."""

    hidden_size: int = 768  # width D
    intermediate_size: int = 3072  # MLP width
    num_layers: int = 12
    num_heads: int = 12
    vocab_size: int = 49408
    max_positions: int = 77
    act: str = "quick_gelu"  # OpenAI CLIP; OpenCLIP models use "gelu"
    projection_dim: int | None = None  # width of text_projection; None when the file has none

    @classmethod
    def clip_l(cls) -> "TextEncoderConfig":
        return cls()

    @classmethod
    def vit_h(cls) -> "TextEncoderConfig":
        return cls(1024, 4096, 24, 16, act="gelu", projection_dim=1024)

    @classmethod
    def vit_bigg(cls) -> "TextEncoderConfig":
        return cls(1280, 5120, 32, 20, act="gelu", projection_dim=1280)

    def hf_config(self):
        """The same shape as transformers' CLIPTextConfig (imports transformers: for random
        initialisation and comparisons only)."""
        from transformers import CLIPTextConfig

        return CLIPTextConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_positions, hidden_act=self.act, layer_norm_eps=1e-5,
            projection_dim=self.projection_dim or self.hidden_size, bos_token_id=BOS, eos_token_id=EOS,
            pad_token_id=1, attn_implementation="sdpa")


@dataclass(frozen=True)
class EncoderRole:
    """How a model reads one encoder: which hidden state, whether it gets the final norm,
    the pad token, and whether the pooled output goes through text_projection."""

    layer_idx: int = -1  # hidden state after this layer; -1 = last, -2 = penultimate (clip skip 2)
    final_norm: bool = True  # apply final_layer_norm to the chosen hidden state
    pad_token: int = EOS
    project_pooled: bool = False

    @classmethod
    def sd1(cls) -> "EncoderRole":
        return cls(-1, True, EOS, False)

    @classmethod
    def sd2(cls) -> "EncoderRole":
        return cls(-2, True, 0, True)

    @classmethod
    def sdxl_l(cls) -> "EncoderRole":
        return cls(-2, False, EOS, False)

    @classmethod
    def sdxl_g(cls) -> "EncoderRole":
        return cls(-2, False, 0, True)


# -- the transformer: transformers' CLIPTextModel layout and arithmetic, without transformers --
# Module and parameter names are transformers' (``embeddings.token_embedding``,
# ``encoder.layers.N.self_attn.q_proj``, ...) so files map to them as before; each layer does
# the same operations in the same order as transformers' sdpa path, so results are bit-identical
# (tests/test_text_encoders.py compares them). Importing transformers cost 2.2 s per process.
class _Embeddings(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        # given weights (left uninitialised: they come from a file or from transformers' init):
        # nn.Embedding's own normal_() on the meta device would import torch._dynamo (1.2 s)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size,
                                            _weight=torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.position_embedding = nn.Embedding(cfg.max_positions, cfg.hidden_size,
                                               _weight=torch.empty(cfg.max_positions, cfg.hidden_size))


class _Attention(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        d = cfg.hidden_size
        self.head_dim = d // cfg.num_heads
        self.scale = self.head_dim ** -0.5
        self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.q_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)  # (B, T, heads, dh)
        q = self.q_proj(x).view(shape).transpose(1, 2)  # (B, heads, T, dh)
        k = self.k_proj(x).view(shape).transpose(1, 2)
        v = self.v_proj(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=self.scale)
        out = out.transpose(1, 2).contiguous()  # (B, T, heads, dh)
        return self.out_proj(out.reshape(*x.shape[:-1], -1).contiguous())


class _MLP(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        if cfg.act not in ("quick_gelu", "gelu"):
            raise ValueError(f"text encoder activation {cfg.act!r} is not quick_gelu or gelu")
        self.act = cfg.act
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.act == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class _Layer(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=1e-5)
        self.mlp = _MLP(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_layers))


class ClipTextTransformer(nn.Module):
    """CLIP's text transformer: embeddings, pre-norm layers, final norm (weights only; the
    forward pass is ClipTextEncoder's, which can stop at any layer)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=1e-5)


def _transformers_init(cfg: TextEncoderConfig) -> dict:
    """The weights transformers' CLIPTextModel starts with under the current seed: random
    checkpoints (make-checkpoint, train-demo) stay the files they were, draw for draw."""
    from transformers import CLIPTextModel

    return CLIPTextModel(cfg.hf_config()).state_dict()


class ClipTextEncoder(nn.Module):
    """CLIP's text transformer plus an optional text_projection, run layer by layer so any
    hidden state can be taken. Built on the meta device (as checkpoints load) it costs no
    import of transformers; built for real, it takes transformers' default initial weights."""

    def __init__(self, config: TextEncoderConfig, role: EncoderRole = EncoderRole()):
        super().__init__()
        self.config = config
        self.role = role
        if torch.empty(0).is_meta:
            self.transformer = ClipTextTransformer(config)
        else:
            with torch.device("meta"):  # shapes only: the weights come from transformers' init
                self.transformer = ClipTextTransformer(config)
            self.transformer.load_state_dict(_transformers_init(config), assign=True)
        self.text_projection = (nn.Linear(config.hidden_size, config.projection_dim, bias=False)
                                if config.projection_dim else None)

    def check_layer(self, layer_idx: int) -> int:
        """Validate a clip-skip index as ComfyUI's CLIPSetLastLayer takes it (-1 last, -2 ...)."""
        n = self.config.num_layers
        if not -n <= layer_idx <= -1:
            raise ValueError(f"clip skip layer {layer_idx} is outside -1..-{n} for a {n}-layer text encoder")
        return layer_idx

    def forward(self, ids: torch.Tensor, embeds: dict | None = None,
                layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T) -> (hidden (B, T, D) after layer ``layer_idx`` (default: the role's),
        pooled (B, D or P)). ``embeds`` maps (b, t) to a vector replacing that token's embedding."""
        layer_idx = self.role.layer_idx if layer_idx is None else self.check_layer(layer_idx)
        tm = self.transformer
        dtype = tm.embeddings.token_embedding.weight.dtype
        x = tm.embeddings.token_embedding(ids)  # (B, T, D)
        if embeds:
            x = x.clone()
            for (b, t), vec in embeds.items():
                x[b, t] = vec.to(x)
        T = ids.shape[1]
        x = x + tm.embeddings.position_embedding.weight[:T]
        causal = torch.full((T, T), float("-inf"), dtype=dtype, device=ids.device).triu_(1)
        causal = causal[None, None]  # (1, 1, T, T), added to the attention scores
        stop = len(tm.encoder.layers) + 1 + layer_idx  # keep the output of this many layers
        hidden = x
        for i, layer in enumerate(tm.encoder.layers):
            x = layer(x, causal)
            if i + 1 == stop:
                hidden = x
        last = tm.final_layer_norm(x)
        if self.role.final_norm:
            hidden = last if stop == len(tm.encoder.layers) else tm.final_layer_norm(hidden)
        eos_at = (ids == EOS).int().argmax(dim=-1)  # first EOS of each row
        pooled = last[torch.arange(ids.shape[0], device=ids.device), eos_at]
        if self.role.project_pooled and self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return hidden, pooled

    def encode_chunks(self, chunks: Sequence[Sequence[tuple]],
                      layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenizer chunks of (token, weight[, word_id]) -> (cond (1, 77k, D), pooled (1, P)).
        A token that is a tensor is a textual-inversion vector; one of the wrong width (an SD1
        embedding in an SDXL prompt, say) is dropped and the chunk padded at the end, as ComfyUI does."""
        device = self.transformer.embeddings.token_embedding.weight.device
        width = self.config.hidden_size
        chunks = [self._fit_embeddings(chunk, width) for chunk in chunks]
        weighted = any(tok[1] != 1.0 for chunk in chunks for tok in chunk)
        rows, embeds = [], {}
        for b, chunk in enumerate(chunks):
            row = []
            for t, tok in enumerate(chunk):
                if isinstance(tok[0], torch.Tensor):
                    embeds[(b, t)] = tok[0]
                    row.append(0)  # placeholder id; never EOS, so pooling is unaffected
                else:
                    row.append(int(tok[0]))
            rows.append(row)
        if weighted:  # the empty prompt, encoded in the same batch as ComfyUI does
            length = len(rows[0])
            rows.append([BOS, EOS] + [self.role.pad_token] * (length - 2))
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        hidden, pooled = self(ids, embeds, layer_idx)
        if weighted:
            z_empty = hidden[-1]
            hidden = hidden[:-1].clone()
            for b, chunk in enumerate(chunks):
                for t, tok in enumerate(chunk):
                    w = tok[1]
                    if w != 1.0:
                        hidden[b, t] = (hidden[b, t] - z_empty[t]) * w + z_empty[t]
        cond = torch.cat(list(hidden[: len(chunks)]), dim=0)[None]  # (1, 77k, D)
        return cond, pooled[:1]

    def _fit_embeddings(self, chunk: Sequence[tuple], width: int) -> list[tuple]:
        kept = [tok for tok in chunk if not (isinstance(tok[0], torch.Tensor) and tok[0].shape[-1] != width)]
        missing = len(chunk) - len(kept)
        return kept + [(self.role.pad_token, 1.0)] * missing


# -- keys: checkpoint layout <-> our modules ------------------------------------------------
IGNORED_KEYS = ("logit_scale", "embeddings.position_ids", "text_model.embeddings.position_ids", "attn_mask")


def hf_clip_keys(sd: dict, prefix: str) -> dict:
    """CLIP stored with transformers' names under ``prefix`` (``...transformer.``) -> our keys."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith("text_model."):
            name = name[len("text_model."):]
        if name.endswith(IGNORED_KEYS) or name == "text_projection.weight" and value.ndim != 2:
            continue
        if name == "text_projection.weight" or name == "text_projection":
            out["text_projection.weight"] = value if name.endswith(".weight") else value.t()
            continue
        out["transformer." + name] = value
    return out


_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def openclip_keys(sd: dict, prefix: str) -> dict:
    """OpenCLIP text tower under ``prefix`` (``...model.``) -> our keys: fused in_proj split
    into q/k/v, names mapped, text_projection transposed (OpenCLIP applies x @ P)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in ("logit_scale", "attn_mask") or name.startswith("visual."):
            continue
        if name == "token_embedding.weight":
            out["transformer.embeddings.token_embedding.weight"] = value
        elif name == "positional_embedding":
            out["transformer.embeddings.position_embedding.weight"] = value
        elif name.startswith("ln_final."):
            out["transformer.final_layer_norm." + name.split(".", 1)[1]] = value
        elif name == "text_projection":
            # contiguous, as ComfyUI stores it: a transposed view takes another matmul path and
            # changes the last bits of the pooled output against the same weights read from an HF file
            out["text_projection.weight"] = value.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            rest = name[len("transformer.resblocks."):]
            idx, sub = rest.split(".", 1)
            base = f"transformer.encoder.layers.{idx}."
            if sub in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = "weight" if sub.endswith("weight") else "bias"
                q, k, v = value.chunk(3, dim=0)
                for letter, part in zip("qkv", (q, k, v)):
                    out[f"{base}self_attn.{letter}_proj.{kind}"] = part
                continue
            module, _, param = sub.rpartition(".")
            if module not in _OPENCLIP_LAYER:
                out["unknown." + name] = value  # reported as unexpected by the strict load
                continue
            out[f"{base}{_OPENCLIP_LAYER[module]}.{param}"] = value
        else:
            out["unknown." + name] = value
    return out


def to_openclip_keys(sd: dict, prefix: str) -> dict:
    """Our keys -> OpenCLIP layout under ``prefix`` (for writing original-layout files)."""
    inverse = {v: k for k, v in _OPENCLIP_LAYER.items()}
    out: dict = {}
    qkv: dict = {}
    for key, value in sd.items():
        if key == "text_projection.weight":
            out[prefix + "text_projection"] = value.t().contiguous()
        elif key == "transformer.embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "transformer.embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("transformer.final_layer_norm."):
            out[prefix + "ln_final." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("transformer.encoder.layers."):
            idx, sub = key[len("transformer.encoder.layers."):].split(".", 1)
            module, _, param = sub.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((idx, param), {})[module[-6]] = value
                continue
            out[f"{prefix}transformer.resblocks.{idx}.{inverse[module]}.{param}"] = value
    for (idx, param), parts in qkv.items():
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{prefix}transformer.resblocks.{idx}.attn.in_proj_{param}"] = fused
    return out


def openclip_file_key(key: str, prefix: str) -> str:
    """The OpenCLIP file's name for one of our keys (for messages); q/k/v are thirds of in_proj."""
    parts = key.split(".")
    if key.startswith("transformer.encoder.layers.") and parts[-2] in ("q_proj", "k_proj", "v_proj"):
        return f"{prefix}transformer.resblocks.{parts[3]}.attn.in_proj_{parts[-1]} (its {parts[-2][0]} third)"
    names = list(to_openclip_keys({key: torch.empty((1, 1), device="meta")}, prefix))
    return names[0] if names else prefix + key


def to_hf_clip_keys(sd: dict, prefix: str) -> dict:
    """Our keys -> transformers layout under ``prefix`` (``...transformer.text_model.``)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("transformer."):
            out[prefix + key[len("transformer."):]] = value
    return out


def config_from_keys(sd: dict, act: str, num_heads: int | None = None) -> TextEncoderConfig:
    """Infer a text encoder's shape from our keys (heads: width // 64 unless given)."""
    vocab, width = sd["transformer.embeddings.token_embedding.weight"].shape
    positions = sd["transformer.embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("transformer.encoder.layers."))
    inter = sd["transformer.encoder.layers.0.mlp.fc1.weight"].shape[0]
    proj = sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else None
    return TextEncoderConfig(width, inter, layers, num_heads or max(1, width // 64), vocab, positions, act, proj)
