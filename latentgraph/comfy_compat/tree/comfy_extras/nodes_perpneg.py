"""ComfyUI's ``comfy_extras.nodes_perpneg``: its node classes are latentgraph's (made on
access), plus ``Guider_PerpNeg``, the Perp-Neg guider packs subclass (Inspire's scheduled-cfg
guider overrides ``predict_noise`` and calls this one's). It is a ``comfy.samplers.CFGGuider``,
so it samples through latentgraph's sampling like the PerpNegGuider node's guider, with the
same guidance (sampling/multi_guidance.perp_neg) and the same cfg hooks."""

from __future__ import annotations

import functools
import math

import torch

from latentgraph.comfy_compat import extras_node
from latentgraph.sampling.multi_guidance import perp_neg

import node_helpers  # the tree's own modules
from comfy.samplers import CFGGuider, calc_cond_batch

__getattr__ = functools.partial(extras_node, __name__)


class Guider_PerpNeg(CFGGuider):
    """Positive, negative and empty prompts; ``cfg`` and ``neg_scale`` as PerpNegGuider's."""

    neg_scale = 1.0

    def set_conds(self, positive: list, negative: list, empty_negative_prompt: list) -> None:
        empty = node_helpers.conditioning_set_values(empty_negative_prompt, {"prompt_type": "negative"})
        self.inner_set_conds({"positive": positive, "empty_negative_prompt": empty, "negative": negative})

    def set_cfg(self, cfg: float, neg_scale: float = 1.0) -> None:
        self.cfg, self.neg_scale = cfg, neg_scale

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict | None = None,
                      seed: int | None = None) -> torch.Tensor:
        """The three predictions in one batch, Perp-Neg guidance, and the pre/post cfg hooks
        called here as cfg_function would call them. Returns the denoised latent."""
        options = {} if model_options is None else model_options
        pos, neg, empty = (self.conds.get(k) for k in ("positive", "negative", "empty_negative_prompt"))
        if not options.get("disable_cfg1_optimization", False) and math.isclose(self.neg_scale, 0.0):
            neg = None
            if math.isclose(self.cfg, 1.0):
                empty = None
        prompts = [pos, neg, empty]
        out = calc_cond_batch(self.inner_model, prompts, x, timestep, options)
        for fn in options.get("sampler_pre_cfg_function", ()):
            out = fn({"conds": prompts, "conds_out": out, "cond_scale": self.cfg, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": options})
        result = perp_neg(out[0], out[1], out[2], self.neg_scale, self.cfg)
        for fn in options.get("sampler_post_cfg_function", ()):
            result = fn({"denoised": result, "cond": pos, "uncond": neg, "cond_scale": self.cfg,
                         "model": self.inner_model, "uncond_denoised": out[1], "cond_denoised": out[0],
                         "sigma": timestep, "model_options": options, "input": x, "empty_cond": empty,
                         "empty_cond_denoised": out[2]})
        return result
