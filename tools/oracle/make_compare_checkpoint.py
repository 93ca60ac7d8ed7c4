"""A random checkpoint that both latentgraph and ComfyUI load, for ``bench/packs.py --compare``.

ComfyUI recognises an SD1 checkpoint by its UNet's width (model_channels 320), its
cross-attention width (context 768) and its conv transformer projections, and it builds the
full-size CLIP-L text encoder and VAE whatever the file holds. So this file has the full CLIP-L
and VAE of SD1.5 and a UNet of SD1.5's widths cut to one level (one ResBlock and one
transformer per block): about 230M parameters, 460 MB in fp16, instead of 1.07B.

    .venv/bin/python tools/oracle/make_compare_checkpoint.py OUT.safetensors
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch

from latentgraph.models.checkpoint import original_layout
from latentgraph.models.families import METADATA_KEY, full_architecture
from latentgraph.models.make import _save, random_networks


def architecture():
    arch = full_architecture("sd15")
    arch.unet = dataclasses.replace(arch.unet, channel_mult=(1,), num_res_blocks=(1,), transformer_depth=(1,),
                                    transformer_depth_middle=1, transformer_depth_output=(1, 1))
    return arch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    arch = architecture()
    with torch.no_grad():
        unet, vae, text = random_networks(arch, args.seed)
        tensors = original_layout(arch, unet, vae, text)
    written = _save(tensors, args.out, "fp16", {METADATA_KEY: arch.to_json()})
    print(f"{args.out}: {len(written)} tensors, {sum(t.numel() for t in written.values()) / 1e6:.1f}M parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
