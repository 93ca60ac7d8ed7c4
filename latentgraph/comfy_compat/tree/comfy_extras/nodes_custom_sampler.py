"""ComfyUI's ``comfy_extras.nodes_custom_sampler``: its node classes are latentgraph's (made on
access), plus the NOISE classes packs build themselves (Impact's samplers make
``Noise_RandomNoise(seed)``): latentgraph's own, which RandomNoise and DisableNoise give, with
ComfyUI's ``seed`` and ``generate_noise(input_latent)``."""

from __future__ import annotations

import functools

from latentgraph.comfy_compat import extras_node
from latentgraph.nodes.custom_sampling import DisabledNoise as Noise_EmptyNoise
from latentgraph.nodes.custom_sampling import RandomNoiseSource as Noise_RandomNoise

__all__ = ["Noise_EmptyNoise", "Noise_RandomNoise"]
__getattr__ = functools.partial(extras_node, __name__)
