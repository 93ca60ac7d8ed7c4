"""`latentgraph make-checkpoint`: the kinds of random-weight file it writes, each in its published
layout (checkpoints, ControlNets, adapters, CLIP vision and style models, split files, upscale
models, LoRA kinds, hypernetworks), for tests and for trying a layout without downloading one."""

from __future__ import annotations

import time
from pathlib import Path

from safetensors import SafetensorError

from .graph import LatentgraphError


def _no_prediction(args, what: str) -> None:
    if args.prediction is not None:
        raise ValueError(f"--prediction is for checkpoints; {what} has none")


def _make_t2i_adapter(args, dtype: str) -> str:
    from .models.make import make_t2i_adapter

    _no_prediction(args, "a T2I-Adapter")
    variant = args.variant or ("xl" if args.family == "sdxl" else "full")
    if args.family not in (("sdxl",) if variant == "xl" else ("sd15", "sd2")):
        raise ValueError(f"a {variant} T2I-Adapter is not for {args.family}: use xl with sdxl, full or light "
                         "with sd15 or sd2")
    make_t2i_adapter(args.out, variant, args.size, args.seed, dtype)
    return f"{args.family} T2I-Adapter ({variant}, {args.size}, {dtype})"


def _make_controlnet(args, dtype: str) -> str:
    from .models.make import make_controlnet

    _no_prediction(args, "a ControlNet")
    config = make_controlnet(args.out, args.family, args.size, args.seed, dtype, write_metadata=not args.no_metadata)
    return f"{config.family} ControlNet ({args.size}, {dtype})"


def _make_control_lora(args, dtype: str) -> str:
    from .models.make import make_control_lora_file

    _no_prediction(args, "a control-LoRA")
    make_control_lora_file(args.out, args.family, args.size, args.seed, dtype, rank=args.rank)
    return f"{args.family} control-LoRA (rank {args.rank}, {args.size}, {dtype})"


def _make_gligen(args, dtype: str) -> str:
    from .models.make import make_gligen

    _no_prediction(args, "a GLIGEN")
    make_gligen(args.out, args.family, args.size, args.seed, dtype, write_metadata=not args.no_metadata)
    return f"{args.family} GLIGEN ({args.size}, {dtype})"


CLIP_VISION_FOR = {"sd15": "vit-l", "sd2": "vit-h", "sdxl": "vit-bigg", "sdxl_refiner": "vit-bigg"}


def _make_clip_vision(args, dtype: str) -> str:
    from .models.make import make_clip_vision

    _no_prediction(args, "a CLIP vision model")
    variant = args.variant or CLIP_VISION_FOR.get(args.family, "vit-l")
    if variant not in CLIP_VISION_FOR.values():
        raise ValueError(f"--variant {variant} is for --kind t2i_adapter; CLIP vision variants are vit-l, vit-h, "
                         "vit-bigg")
    layout = args.layout or "hf"
    make_clip_vision(args.out, variant, args.size, args.seed, dtype, layout, write_metadata=not args.no_metadata)
    return f"CLIP vision {variant} ({layout} layout, {args.size}, {dtype})"


def _make_style_model(args, dtype: str) -> str:
    from .models.make import make_style_model

    _no_prediction(args, "a style model")
    make_style_model(args.out, args.family, args.size, args.seed, dtype, write_metadata=not args.no_metadata)
    return f"{args.family} style model ({args.size}, {dtype})"


def _make_checkpoint(args, dtype: str) -> str:
    from .models.make import UNCLIP_FAMILIES, make_checkpoint, make_unclip_checkpoint

    write = make_unclip_checkpoint if args.family in UNCLIP_FAMILIES else make_checkpoint
    if args.variant is not None and write is not make_checkpoint:
        raise ValueError(f"--variant {args.variant} is not a variant of {args.family}")
    extra = {"variant": args.variant} if args.variant is not None else {}
    arch = write(args.out, args.family, args.size, args.seed, dtype, args.prediction,
                 write_metadata=not args.no_metadata, **extra)
    return f"{arch.spec.label} ({args.size}, {arch.prediction}-prediction, {dtype})"


# --kind -> writer(args, dtype) returning what was written, for the message; one entry per kind
MAKE_KINDS = {"checkpoint": _make_checkpoint, "controlnet": _make_controlnet, "t2i_adapter": _make_t2i_adapter,
              "control_lora": _make_control_lora, "gligen": _make_gligen}
MAKE_KINDS.update(clip_vision=_make_clip_vision, style_model=_make_style_model)


def _make_split(args, dtype: str) -> str:
    """--kind unet|clip|diffusers: split files (models/make_split.py)."""
    from .models.make_split import write_for_cli

    return write_for_cli(args.kind, args, dtype)


MAKE_KINDS.update(unet=_make_split, clip=_make_split, diffusers=_make_split)


UPSCALE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _make_upscale_model(args, dtype: str) -> str:
    """--kind upscale_model: a tiny random spandrel model (models/upscale.py) in its published key
    layout; no family (it works on pixels) and no metadata (spandrel detects it from the keys)."""
    import torch
    from safetensors.torch import save_file

    from .models.upscale import TINY_UPSCALE_VARIANTS, make_tiny_upscale_state_dict

    if args.family is not None:
        raise ValueError("--family is not for --kind upscale_model: an upscale model works on pixels, for any family")
    _no_prediction(args, "an upscale model")
    if args.size != "tiny":
        raise ValueError("--kind upscale_model is made in --size tiny only")
    variant = args.variant or "esrgan"
    if variant not in TINY_UPSCALE_VARIANTS:
        raise ValueError(f"--variant {variant} is not an upscale model; choose one of {', '.join(TINY_UPSCALE_VARIANTS)}")
    target = getattr(torch, UPSCALE_DTYPES[dtype])
    tensors = {k: v.to(target).contiguous() for k, v in make_tiny_upscale_state_dict(variant, args.seed).items()}
    save_file(tensors, args.out)
    return f"tiny {variant} upscale model ({dtype})"


MAKE_KINDS.update(upscale_model=_make_upscale_model)


def _make_adapter(args, dtype: str) -> str:
    """--kind lora|hypernetwork: random files in the published layouts (models/lora_make.py)."""
    from .models.lora_make import write_for_cli

    return write_for_cli(args.kind, args, dtype)


MAKE_KINDS.update(lora=_make_adapter, hypernetwork=_make_adapter)


def cmd_make_checkpoint(args) -> int:
    from .models.checkpoint import CheckpointError

    dtype = args.dtype or ("fp32" if args.size == "tiny" else "fp16")
    start = time.perf_counter()
    try:
        if args.family is None and args.kind != "upscale_model":
            raise ValueError(f"--family is required for --kind {args.kind}")
        if args.variant is not None and args.kind not in ("t2i_adapter", "clip_vision", "checkpoint", "clip",
                                                          "upscale_model", "lora"):
            raise ValueError("--variant is for --kind checkpoint, t2i_adapter, clip_vision, clip, upscale_model "
                             "or lora")
        if args.layout is not None and args.kind not in ("clip_vision", "unet", "clip"):
            raise ValueError("--layout is for --kind clip_vision, unet or clip")
        if args.rank is not None and args.kind not in ("control_lora", "lora"):
            raise ValueError("--rank is for --kind control_lora or lora")
        if args.kind == "control_lora" and args.rank is None:
            args.rank = 4
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # as for a checkpoint, for every kind
        what = MAKE_KINDS[args.kind](args, dtype)
    except (ValueError, CheckpointError) as exc:
        raise LatentgraphError(f"latentgraph make-checkpoint: {exc}") from None
    except (OSError, SafetensorError) as exc:
        raise LatentgraphError(f"{args.out}: cannot write: {getattr(exc, 'strerror', None) or exc}") from None
    out = Path(args.out)  # a file, or a folder (--kind diffusers): then every file in it
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.is_dir() else out.stat().st_size
    print(f"wrote {args.out}: {what}, {size / 1e6:.1f} MB in {time.perf_counter() - start:.1f} s")
    return 0
