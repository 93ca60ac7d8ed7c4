"""ComfyUI's ``comfy.sd1_clip``: its prompt-weight helpers (``token_weights``,
``escape_important``, ...) over latentgraph's tokenizer, which parses ComfyUI's syntax the same
way. Its text-encoder and tokenizer classes are ComfyUI's internals: they exist so packs can
import and subclass them, and making one is the layer's missing-name error. The text-encoder
models answer isinstance for ``clip.cond_stage_model`` (latentgraph's TextEncoderFace) of the
same encoders: SD1ClipModel for CLIP-L alone, comfy.sdxl_clip's SDXLClipModel for L and G,
SDXLRefinerClipModel for G alone."""

from __future__ import annotations

import os

from latentgraph.comfy_compat import runtime
from latentgraph.models.comfy_faces import TextEncoderFace
from latentgraph.models.tokenizer import weigh_unescaped

__all__ = ["ClipTokenWeightEncoder", "SD1ClipModel", "SD1Tokenizer", "SDClipModel", "SDTokenizer", "escape_important",
           "expand_directory_list", "token_weights", "unescape_important"]

# the stand-ins ComfyUI puts for escaped parentheses while weights are parsed
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class _ByEncoders(type):
    """isinstance holds for latentgraph's face of ``clip.cond_stage_model`` when this class, or
    one of the tree's classes below it, is ComfyUI's text-encoder model for the same encoders
    (``_SLOTS``, set on the tree's own classes only: a pack's subclass matches nothing)."""

    def __instancecheck__(cls, obj) -> bool:
        if type.__instancecheck__(cls, obj):
            return True
        if not isinstance(obj, TextEncoderFace):
            return False
        stack = [cls]
        while stack:
            klass = stack.pop()
            if klass.__dict__.get("_SLOTS") == obj.slots:
                return True
            stack.extend(klass.__subclasses__())
        return False


class ComfyOnly(metaclass=_ByEncoders):
    """A ComfyUI class latentgraph has no counterpart of: importable and subclassable, and
    making one names it as what the pack needs. Its text-encoder models answer isinstance for
    ``clip.cond_stage_model`` of latentgraph's CLIP values (see _ByEncoders)."""

    def __init__(self, *args, **kwargs):
        raise runtime.missing(type(self).__module__, type(self).__name__)


class ClipTokenWeightEncoder(ComfyOnly):
    pass


class SDClipModel(ClipTokenWeightEncoder):
    pass


class SD1ClipModel(ComfyOnly):
    _SLOTS = frozenset({"l"})


class SDTokenizer(ComfyOnly):
    pass


class SD1Tokenizer(ComfyOnly):
    pass


def escape_important(text: str) -> str:
    """``\\(`` and ``\\)`` replaced by stand-ins, so token_weights takes them as text."""
    for escaped, stand_in in _ESCAPES:
        text = text.replace(escaped, stand_in)
    return text


def unescape_important(text: str) -> str:
    """The stand-ins of escape_important back as plain parentheses (the backslash is gone)."""
    for escaped, stand_in in _ESCAPES:
        text = text.replace(stand_in, escaped[-1])
    return text


def token_weights(string: str, current_weight: float) -> list[tuple[str, float]]:
    """[(text, weight)] of a prompt in ComfyUI's syntax: ``(x)`` multiplies by 1.1 per level,
    ``(x:1.3)`` sets the weight; run escape_important first to keep literal parentheses."""
    return weigh_unescaped(string, current_weight)


def expand_directory_list(directories: list) -> list:
    """The folders given and every folder below them (links followed), each once."""
    found = set()
    for top in directories:
        found.add(top)
        for root, _dirs, _files in os.walk(top, followlinks=True):
            found.add(root)
    return list(found)
