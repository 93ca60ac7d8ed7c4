"""TextModel: what travels on a CLIP socket. A family's tokenizers and text encoders, and
how their outputs combine into (cond, pooled): SD1 CLIP-L; SD2 ViT-H; SDXL CLIP-L and bigG
side by side (2048 wide) with bigG's projected pooled output; the refiner bigG alone."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .comfy_faces import ClipFace
from .families import Architecture
from .management import Placement
from .text_encoders import EOS, ClipTextEncoder
from .tokenizer import ClipBPE, PromptTokenizer

# textual-inversion file keys per encoder (SDXL embeddings hold clip_l and clip_g)
_EMBEDDING_KEYS = {"l": "clip_l", "g": "clip_g", "h": "clip_h"}


@dataclass
class TextModel(ClipFace):
    """Tokenize and encode prompts for one checkpoint. ``layer_idx`` is the clip skip
    (None: the family's default); ``with_clip_skip`` returns a copy sharing the weights."""

    arch: Architecture
    encoders: dict[str, ClipTextEncoder]
    placement: Placement
    embedding_dirs: tuple[Path, ...] = ()
    layer_idx: int | None = None

    def __post_init__(self):
        bpe = ClipBPE()
        self.tokenizers = {}
        for slot in self.arch.spec.text:
            enc = self.encoders[slot.name]
            pad_eos = enc.role.pad_token == EOS
            self.tokenizers[slot.name] = PromptTokenizer(
                pad_token=enc.role.pad_token, embedding_dir=list(self.embedding_dirs) or None,
                embedding_size=enc.config.hidden_size, embedding_key=_EMBEDDING_KEYS[slot.name],
                pad_with_end=pad_eos, bpe=bpe)

    def with_clip_skip(self, layer_idx: int) -> "TextModel":
        for enc in self.encoders.values():
            enc.check_layer(layer_idx)
        twin = replace(self, layer_idx=layer_idx)
        return twin

    def tokenize(self, text: str, return_word_ids: bool = False) -> dict[str, list[list[tuple]]]:
        """{encoder: chunks of 77 (token, weight) or, with return_word_ids, (token, weight, word id)}."""
        return {name: tok.tokenize_with_weights(text, return_word_ids) for name, tok in self.tokenizers.items()}

    @torch.no_grad()
    def encode_tokens(self, tokens: dict[str, list]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (cond (1, 77k, context_dim), pooled (1, P)) on the CPU, in float32."""
        outs = {name: self.encode_one(name, tokens[name]) for name in self.encoders}
        family = self.arch.family
        if family == "sdxl":
            (l_cond, _), (g_cond, g_pooled) = outs["l"], outs["g"]
            cut = min(l_cond.shape[1], g_cond.shape[1])
            return torch.cat([l_cond[:, :cut], g_cond[:, :cut]], dim=-1), g_pooled
        (only,) = outs.values()
        return only

    @torch.no_grad()
    def encode_one(self, name: str, chunks: list, layer_idx: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One encoder's chunks alone -> (cond, pooled) on the CPU in float32, from hidden layer
        ``layer_idx`` (None: this value's clip skip)."""
        enc = self.encoders[name]
        with self.placement.use(enc):
            cond, pooled = enc.encode_chunks(chunks, self.layer_idx if layer_idx is None else layer_idx)
        return cond.float().cpu(), pooled.float().cpu()

    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_tokens(self.tokenize(text))
