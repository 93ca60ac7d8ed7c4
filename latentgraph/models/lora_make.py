"""Random LoRA files in the published LyCORIS/kohya layouts (``latentgraph make-checkpoint
--kind lora --variant ...``), for tests and for checking other programs against ours.

Every Linear and Conv2d weight of the UNet and of the first text encoder gets an adapter, named
as kohya does (``lora_unet_<LDM path>``, ``lora_te_<transformers path>``, dots as
underscores); a module whose shape a variant cannot take (OFT's blocks must divide the output
width) is left out. Values are small seeded normals, so the model changes visibly but stays sane.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

VARIANTS = ("lora", "locon", "loha", "lokr", "dora", "oft", "boft", "glora")


def _targets(module: nn.Module, prefix: str, text: bool) -> list[tuple[str, torch.Tensor]]:
    """(kohya name, weight) of every Linear/Conv2d; for a text encoder only its encoder layers
    (the token embedding is no matrix product)."""
    out = []
    for path, sub in module.named_modules():
        if not isinstance(sub, (nn.Linear, nn.Conv2d)):
            continue
        if text:
            if not path.startswith("transformer.encoder."):
                continue
            path = "text_model." + path[len("transformer."):]
        out.append((prefix + path.replace(".", "_"), sub.weight))
    return out


def _split(n: int) -> tuple[int, int]:
    """n = a * b with a <= b as close as can be (LoKr's Kronecker factors)."""
    a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return a, n // a


def _magnitude(weight: torch.Tensor, per_out: bool, g: torch.Generator) -> torch.Tensor:
    """A DoRA magnitude near the weight's own norms ((out, 1, ...) or (1, in, ...))."""
    ones = (1,) * (weight.dim() - 2)
    if weight.is_meta:  # shapes only: default-initialised weights have rows of norm ~ 1/sqrt(3)
        out, cols = weight.shape[0], weight[0].numel()
        base = torch.full((out, 1, *ones), 3 ** -0.5) if per_out else \
            torch.full((1, weight.shape[1], *ones), (out / (3 * cols)) ** 0.5 * weight[0, 0].numel() ** 0.5)
    elif per_out:
        base = weight.detach().float().reshape(weight.shape[0], -1).norm(dim=1).reshape(-1, 1, *ones)
    else:
        w = weight.detach().float().transpose(0, 1)
        base = w.reshape(w.shape[0], -1).norm(dim=1).reshape(1, -1, *ones)
    return base * (1 + 0.1 * torch.randn(base.shape, generator=g))


def _adapter(variant: str, name: str, weight: torch.Tensor, rank: int, g: torch.Generator, i: int) -> dict:
    """One module's tensors in ``variant``'s layout, or {} where its shape does not suit it.
    Sizes are chosen so the delta is about a third of the weight's own spread."""
    def rnd(*shape: int, std: float = 0.1) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    out, inp, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    cols = weight[0].numel()
    w = (3 * cols) ** -0.5 if weight.is_meta else weight.detach().float().std().item()  # default init's spread
    conv3 = bool(kernel) and kernel != (1, 1)
    alpha = {f"{name}.alpha": torch.tensor(float(rank) / 2)}  # scale alpha / rank = 1/2
    if variant in ("lora", "dora", "locon"):
        t = {f"{name}.lora_up.weight": rnd(out, rank, *(1,) * len(kernel), std=w), **alpha}
        if variant == "locon" and conv3:  # LoCon's Tucker form: 1x1 down, then the kernel-sized mid
            t[f"{name}.lora_down.weight"] = rnd(rank, inp, 1, 1, std=0.3)
            t[f"{name}.lora_mid.weight"] = rnd(rank, rank, *kernel, std=0.15)
        else:
            t[f"{name}.lora_down.weight"] = rnd(rank, inp, *kernel, std=0.3)
        if variant == "dora":
            t[f"{name}.dora_scale"] = _magnitude(weight, i % 2 == 0, g)
        return t
    if variant == "loha":
        a = (0.6 * w) ** 0.5 / rank ** 0.5
        if conv3:  # Tucker cores for a kernel, w*_a/w*_b then (rank, out)/(rank, in)
            return {f"{name}.hada_t1": rnd(rank, rank, *kernel, std=0.5), f"{name}.hada_t2": rnd(rank, rank, *kernel,
                                                                                                 std=0.5),
                    f"{name}.hada_w1_a": rnd(rank, out, std=a), f"{name}.hada_w1_b": rnd(rank, inp, std=0.5),
                    f"{name}.hada_w2_a": rnd(rank, out, std=a), f"{name}.hada_w2_b": rnd(rank, inp, std=0.5), **alpha}
        return {f"{name}.hada_w1_a": rnd(out, rank, std=a), f"{name}.hada_w1_b": rnd(rank, cols, std=1.0),
                f"{name}.hada_w2_a": rnd(out, rank, std=a), f"{name}.hada_w2_b": rnd(rank, cols, std=1.0), **alpha}
    if variant == "lokr":
        # no Tucker core lokr_t2 here: torch 2.14's kron refuses the einsum's strided result,
        # so ComfyUI 0.3.64 skips such weights (logging an error); latentgraph applies them
        (a, c), (b, d) = _split(out), _split(inp)
        t = {f"{name}.lokr_w1": rnd(a, b, std=0.5), **alpha}
        if conv3 or i % 2:  # the second factor whole (a conv's keeps its kernel)
            t[f"{name}.lokr_w2"] = rnd(c, d, *kernel, std=0.6 * w)
        else:
            t |= {f"{name}.lokr_w2_a": rnd(c, rank, std=0.5),
                  f"{name}.lokr_w2_b": rnd(rank, d * math.prod(kernel), std=1.2 * w / rank ** 0.5)}
        return t
    if variant == "glora":  # LyCORIS' current layout: W @ a1 @ a2 + b1 @ b2
        return {f"{name}.a1.weight": rnd(inp, rank), f"{name}.a2.weight": rnd(rank, inp),
                f"{name}.b1.weight": rnd(out, rank, std=w), f"{name}.b2.weight": rnd(rank, cols, std=0.3), **alpha}
    block = 4
    if variant == "oft" and out % block == 0:
        return {f"{name}.oft_blocks": rnd(out // block, block, block, std=0.05),
                f"{name}.alpha": torch.tensor(0.5 if i % 2 else 0.0)}
    if variant == "boft" and out % (2 * block) == 0:
        t = {f"{name}.oft_blocks": rnd(2, out // block, block, block, std=0.05), f"{name}.alpha": torch.tensor(0.5)}
        if i % 2:
            t[f"{name}.rescale"] = 1 + rnd(out, *(1,) * (weight.dim() - 1))
        return t
    return {}


def make_lora(unet: nn.Module, text_encoders: nn.Module | list[nn.Module] | None, variant: str, seed: int = 0,
              rank: int = 4) -> dict[str, torch.Tensor]:
    """The tensors of a random ``variant`` LoRA for these modules (a UNet and the family's text
    encoders in our layout; they may be on the meta device, as only their shapes matter, except
    for DoRA magnitudes, which follow real weights when there are any). One text encoder is
    named ``lora_te_``, two (SDXL) ``lora_te1_`` and ``lora_te2_``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown LoRA variant {variant!r}; known: {', '.join(VARIANTS)}")
    if rank < 1:
        raise ValueError(f"the rank must be at least 1, not {rank}")
    if isinstance(text_encoders, nn.Module):
        text_encoders = [text_encoders]
    encoders = list(text_encoders or [])
    prefixes = ["lora_te_"] if len(encoders) == 1 else [f"lora_te{i + 1}_" for i in range(len(encoders))]
    g = torch.Generator().manual_seed(seed)
    targets = _targets(unet, "lora_unet_", False)
    for prefix, encoder in zip(prefixes, encoders):
        targets += _targets(encoder, prefix, True)
    tensors: dict[str, torch.Tensor] = {}
    for i, (name, weight) in enumerate(targets):
        tensors |= _adapter(variant, name, weight, rank, g, i)
    return {k: v.contiguous() for k, v in tensors.items()}


def make_lora_file(out: str | Path, family: str, size: str, seed: int, variant: str, rank: int = 4,
                   dtype: torch.dtype = torch.float32) -> int:
    """Write a random ``variant`` LoRA for a ``family`` checkpoint of ``size``; returns its key
    count. A tiny one is made over ``make-checkpoint --size tiny --seed <seed>``'s weights (so
    DoRA's magnitudes fit that file); a full-size one over shapes only."""
    from .checkpoint import build_text_encoders
    from .families import full_architecture, tiny_architecture
    from .make import random_networks
    from .unet import UNetModel

    if size == "tiny":
        unet, _, text = random_networks(tiny_architecture(family), seed)
    else:
        arch = full_architecture(family)
        with torch.device("meta"):
            unet, text = UNetModel(arch.unet), build_text_encoders(arch)
    tensors = make_lora(unet, list(text.values()), variant, seed, rank)
    save_lora({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, out, variant)
    return len(tensors)


def save_lora(tensors: dict[str, torch.Tensor], out: str | Path, variant: str) -> None:
    from .checkpoint import save_checkpoint

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(tensors, Path(out), metadata={"format": "pt", "latentgraph.lora_variant": variant})


def make_hypernetwork_file(out: str | Path, family: str, size: str, seed: int, activation: str = "relu") -> list[int]:
    """Write a random hypernetwork for a ``family`` UNet of ``size``: for each attention input
    width an MLP width -> 2 x width -> width for keys and one for values, in A1111's pickle
    layout (``.pt``) or, for a ``.safetensors`` name, latentgraph's safetensors version
    (models/hypernetwork.py). Returns the widths."""
    from collections import OrderedDict

    from .families import full_architecture, tiny_architecture
    from .hypernetwork import attention_widths
    from .unet import UNetModel

    arch = tiny_architecture(family) if size == "tiny" else full_architecture(family)
    with torch.device("meta"):
        widths = sorted(attention_widths(UNetModel(arch.unet)))
    g = torch.Generator().manual_seed(seed)

    def mlp(w: int) -> OrderedDict:  # linear.1 is the activation's slot in A1111's Sequential
        return OrderedDict([("linear.0.weight", torch.randn(2 * w, w, generator=g) * w ** -0.5 * 0.3),
                            ("linear.0.bias", torch.zeros(2 * w)),
                            ("linear.2.weight", torch.randn(w, 2 * w, generator=g) * (2 * w) ** -0.5 * 0.3),
                            ("linear.2.bias", torch.zeros(w))])

    nets = {w: [mlp(w), mlp(w)] for w in widths}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if str(out).endswith(".safetensors"):
        from .checkpoint import save_checkpoint

        tensors = {f"{w}.{i}.{k}": t for w, pair in nets.items() for i, sd in enumerate(pair) for k, t in sd.items()}
        save_checkpoint(tensors, Path(out), metadata={"activation_func": activation})
    else:
        torch.save({**nets, "activation_func": activation, "is_layer_norm": False, "use_dropout": False,
                    "activate_output": False, "last_layer_dropout": False, "layer_structure": [1, 2, 1]}, out)
    return widths


SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def write_for_cli(kind: str, args, dtype: str) -> str:
    """``make-checkpoint --kind lora|hypernetwork``: write the file, return what was written."""
    if args.prediction is not None:
        raise ValueError(f"--prediction is for checkpoints; a {kind} has none")
    if args.family not in ("sd15", "sd2", "sdxl", "sdxl_refiner"):
        raise ValueError(f"--kind {kind} is for --family sd15, sd2, sdxl or sdxl_refiner, not {args.family}")
    if kind == "hypernetwork":
        if args.variant is not None or args.rank is not None:
            raise ValueError("--variant and --rank are not for --kind hypernetwork")
        widths = make_hypernetwork_file(args.out, args.family, args.size, args.seed)
        return f"{args.family} hypernetwork for attention widths {', '.join(map(str, widths))} ({args.size}, fp32)"
    variant = args.variant or "lora"
    if variant not in VARIANTS:
        raise ValueError(f"--variant {variant} is not a LoRA variant; --kind lora takes {', '.join(VARIANTS)}")
    rank = 4 if args.rank is None else args.rank
    count = make_lora_file(args.out, args.family, args.size, args.seed, variant, rank, SAVE_DTYPES[dtype])
    return f"{args.family} {variant} LoRA ({count} tensors, rank {rank}, {args.size}, {dtype})"
