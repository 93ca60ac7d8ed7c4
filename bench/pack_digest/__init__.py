"""A one-node ComfyUI pack used by bench/packs.py --compare: ``LgDigest`` takes any value and
shows a JSON summary of it (tensor shapes, sums, a few values; strings and numbers as they
are; MODEL, CLIP and VAE values by kind), so a prompt run on ComfyUI and on latentgraph can be
compared through the history's UI text, with the same code computing the summary on both sides."""

import json


def summary(value, depth=0):
    try:
        import torch
    except ImportError:  # pragma: no cover - both sides have torch
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        data = value.detach().float().cpu().reshape(-1)
        return {"shape": list(value.shape), "sum": float(data.sum()), "abs": float(data.abs().sum()),
                "head": [round(float(x), 4) for x in data[:8]]}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if depth > 3:
        return type(value).__name__
    kind = _kind(value)
    if kind is not None:
        return kind
    if isinstance(value, dict):
        return {str(k): summary(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))[:8]}
    if isinstance(value, (list, tuple)):
        return [summary(v, depth + 1) for v in list(value)[:8]]
    return type(value).__name__


def _kind(value):
    """MODEL, CLIP and VAE by what they do, not by class: the classes differ between the two
    sides (ComfyUI's ModelPatcher, CLIP, VAE; latentgraph's SDModel, TextModel, VAE)."""
    if hasattr(value, "tokenize") and hasattr(value, "encode_from_tokens"):
        return "<CLIP>"
    if hasattr(value, "model_options") and hasattr(value, "clone") and not hasattr(value, "decode"):
        return "<MODEL>"
    if hasattr(value, "decode") and hasattr(value, "encode") and hasattr(value, "spacial_compression_encode"):
        return "<VAE>"
    return None


class LgDigest:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*", {})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "digest"
    CATEGORY = "latentgraph/bench"

    @classmethod
    def VALIDATE_INPUTS(cls, input_types=None):
        return True  # any type may come in

    def digest(self, value=None):  # ComfyUI calls it without a value when the output list is empty
        return {"ui": {"text": [json.dumps(summary(value), sort_keys=True)]}}


NODE_CLASS_MAPPINGS = {"LgDigest": LgDigest}
