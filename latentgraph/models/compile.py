"""``--compile``: torch.compile of the UNet, done once per loaded UNet and cached per shape.

- ``regional`` (what ``--compile`` alone means): each ResBlock and each transformer block is
  compiled on its own. SD's UNet repeats a few block shapes many times, and blocks of one class
  share their compiled code, so compiling takes a fraction of the whole network's time; a
  patched model (attention patches, replacements) keeps its patched transformer blocks eager
  and its ResBlocks compiled.
- ``full``: the whole UNet forward as one graph, with CUDA graphs on a GPU (torch's
  "reduce-overhead" mode; fixed shapes, so each new size compiles once). Fastest on a GPU for
  an unpatched model; a patched model recompiles or falls back per call, so use regional there.

Both compile per input shape (``dynamic=False``): a new image size or batch compiles once more
and is then cached, up to ``RECOMPILE_LIMIT`` shapes per block (torch's default of 8 is fewer
than SD's distinct block shapes). A failure to compile is an error that says so and how to run
without it, never a silent eager fallback.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..graph.env import COMPILE_MODES
from .unet import BasicTransformerBlock, ResBlock

RECOMPILE_LIMIT = 64
BACKEND = "inductor"  # torch.compile's backend (tests use "aot_eager": no C++ build)
NODE_BACKENDS = ("inductor", "cudagraphs")  # ComfyUI's TorchCompileModel choices


class CompileError(RuntimeError):
    pass


def _raise_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))


def compile_unet(unet: nn.Module, mode: str, device: torch.device | None = None, backend=None) -> int:
    """Compile ``unet`` in place for ``mode``; a second call with the same mode does nothing.
    Returns how many modules were compiled (0 when already done or ``off``)."""
    backend = backend or BACKEND
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    done = getattr(unet, "_lg_compiled", "off")
    if mode == "off" or done == mode:
        return 0
    if done != "off":
        raise CompileError(f"this UNet is already compiled ({done}); it cannot be compiled again as {mode}")
    _raise_limit()
    count = 0
    if mode == "full":
        cuda = device is not None and device.type == "cuda"
        unet.compile(backend=backend, dynamic=False, mode="reduce-overhead" if cuda and backend == "inductor" else None)
        count = 1
    else:
        for module in unet.modules():
            if isinstance(module, ResBlock):
                module.compile(backend=backend, dynamic=False)
                count += 1
            elif isinstance(module, BasicTransformerBlock):
                # only the unpatched path: a patched call brings callables and counters that
                # would make every call a new graph
                module._forward_plain = torch.compile(module._forward_plain, backend=backend, dynamic=False)
                count += 1
    unet._lg_compiled = mode
    return count


def compiled_module(unet: nn.Module, backend: str) -> nn.Module:
    """TorchCompileModel's compile: the whole UNet through ``backend``, as a wrapper kept apart
    from the UNet (the model the node was given runs uncompiled, as in ComfyUI), made once per
    UNet and backend (stored outside the module's registered children: no state-dict keys)."""
    if backend not in NODE_BACKENDS:
        raise ValueError(f"unknown torch.compile backend {backend!r}; choose one of {', '.join(NODE_BACKENDS)}")
    made = unet.__dict__.setdefault("_lg_node_compiled", {})
    if backend not in made:
        _raise_limit()
        made[backend] = torch.compile(unet, backend=BACKEND if backend == "inductor" else backend)
    return made[backend]


def run_compiled(call: Callable[[], torch.Tensor], mode: str, label: str | None = None,
                 advice: str = "run without --compile, or with --compile regional if this was full") -> torch.Tensor:
    """``call()``, with a failure of torch.compile turned into a CompileError that says what
    failed (``label``, default "--compile MODE") and how to run without it."""
    try:
        return call()
    except Exception as exc:
        if mode == "off" or not _from_compiler(exc):
            raise
        root = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
        first = str(root).strip().splitlines()[0] if str(root).strip() else ""
        raise CompileError(f"{label or '--compile ' + mode}: torch.compile failed ({type(root).__name__}: "
                           f"{first}); {advice}") from None


def _from_compiler(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) or "BackendCompilerFailed" in type(exc).__name__
