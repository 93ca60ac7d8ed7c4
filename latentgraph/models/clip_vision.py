"""CLIP image encoders (CLIP_VISION) and what they produce (CLIP_VISION_OUTPUT).

The output's fields carry ComfyUI's names, since custom nodes read them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ClipVisionOutput:
    """One CLIPVisionEncode result for a batch of B images (ComfyUI's field names).

    last_hidden_state: (B, tokens, width), the encoder's last layer before the final norm
    image_embeds: (B, projection_dim), the projected, normed class token (unCLIP, Revision)
    penultimate_hidden_states: (B, tokens, width), the layer before the last (IP-Adapter plus)
    mm_projected: a multimodal projection where the model has one, else None
    """

    last_hidden_state: torch.Tensor
    image_embeds: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    mm_projected: torch.Tensor | None = None

    def __getitem__(self, key: str):
        """``output["image_embeds"]``, as ComfyUI's Output object allows."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)
