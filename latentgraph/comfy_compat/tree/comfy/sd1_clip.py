"""ComfyUI's ``comfy.sd1_clip``: its prompt-weight helpers (``token_weights``,
``escape_important``, ...) over latentgraph's tokenizer, which parses ComfyUI's syntax the same
way. Its text-encoder and tokenizer classes are ComfyUI's internals (``clip.cond_stage_model``,
``clip.tokenizer``, which latentgraph's CLIP values do not have): they exist so packs can
import and subclass them, no value here is an instance of one, and making one is the layer's
missing-name error."""

from __future__ import annotations

import os

from latentgraph.comfy_compat import runtime
from latentgraph.models.tokenizer import weigh_unescaped

__all__ = ["ClipTokenWeightEncoder", "SD1ClipModel", "SD1Tokenizer", "SDClipModel", "SDTokenizer", "escape_important",
           "expand_directory_list", "token_weights", "unescape_important"]

# the stand-ins ComfyUI puts for escaped parentheses while weights are parsed
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class ComfyOnly:
    """A ComfyUI class latentgraph has no counterpart of: importable and subclassable, and
    making one names it as what the pack needs."""

    def __init__(self, *args, **kwargs):
        raise runtime.missing(type(self).__module__, type(self).__name__)


class ClipTokenWeightEncoder(ComfyOnly):
    pass


class SDClipModel(ClipTokenWeightEncoder):
    pass


class SD1ClipModel(ComfyOnly):
    pass


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
