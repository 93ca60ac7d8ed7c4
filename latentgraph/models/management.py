"""Device and dtype placement, the model cache, and the low-memory mode.

Chosen once per front door (``--device``, ``--dtype``, ``--lowvram``, ``--vram-budget``) and
handed to nodes as an object; nothing here is a global. In low-memory mode weights stay on the
CPU and a model moves to the device only while it runs; with a memory manager (models/vram.py,
the default on CUDA) models stay on the device while they fit a budget.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

if TYPE_CHECKING:
    from .vram import MemoryManager

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", "fast", *DTYPES)
ROLES = ("unet", "text", "vae")


def resolve_device(spec: str = "auto") -> torch.device:
    """auto: cuda if there is one, else mps, else cpu. Asking for an absent device is an error."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but this torch sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for, but it is not available")
    return device


def resolve_dtypes(device: torch.device, spec: str = "auto") -> dict[str, torch.dtype]:
    """dtype per role. auto: fp16 UNet and text encoders on CUDA, the VAE in bf16 where the
    device supports it (fp16 VAEs overflow to NaN) else fp32; everything fp32 on the CPU.
    fast (``--precision fast``): as auto on a GPU; bf16 where it pays on the CPU (fast_cpu_dtypes)."""
    if spec not in DTYPE_CHOICES:
        raise ValueError(f"unknown dtype {spec!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if spec not in ("auto", "fast"):
        return {role: DTYPES[spec] for role in ROLES}
    if spec == "fast" and device.type == "cpu":
        return fast_cpu_dtypes()
    if device.type == "cuda":
        vae = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return {"unet": torch.float16, "text": torch.float16, "vae": vae}
    if device.type == "mps":
        return {"unet": torch.float16, "text": torch.float16, "vae": torch.float32}
    return {role: torch.float32 for role in ROLES}


def fast_cpu_dtypes() -> dict[str, torch.dtype]:
    """``--precision fast`` on the CPU: the UNet and text encoders in bf16 where the CPU has
    bf16 instructions (models/cpu_kernels.py), the VAE in fp32 (it runs once per image, and
    bf16 costs its colours more than it saves); all fp32 where the CPU lacks them."""
    from .cpu_kernels import cpu_bf16_native

    low = torch.bfloat16 if cpu_bf16_native() else torch.float32
    return {"unet": low, "text": low, "vae": torch.float32}


@dataclass
class Placement:
    """Where models run and in which dtypes; ``offload`` is the low-memory mode; ``memory``
    (models/vram.py) keeps models on the device under a budget and offloads the least
    recently used (None: without a budget on the CPU, or with --lowvram)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtypes: dict[str, torch.dtype] = field(default_factory=lambda: {r: torch.float32 for r in ROLES})
    offload: bool = False
    memory: "MemoryManager | None" = field(default=None, compare=False, repr=False)
    compile: str = "off"  # --compile: how SDModel.apply_model compiles the UNet (models/compile.py)

    @classmethod
    def from_options(cls, device: str = "auto", dtype: str = "auto", lowvram: bool = False,
                     vram_budget: float | str | None = None, compile: str = "off") -> "Placement":
        dev = resolve_device(device)
        placement = cls(dev, resolve_dtypes(dev, dtype), lowvram and dev.type != "cpu", compile=compile)
        if lowvram and vram_budget not in (None, "auto"):
            raise ValueError("--lowvram and --vram-budget both say how to use device memory: give one of them "
                             "(--lowvram moves each model to the device only while it runs; --vram-budget keeps "
                             "models there while they fit)")
        if not lowvram:
            from .vram import manager_for  # torch-heavy users only: the CPU without a budget never needs it

            placement.memory = manager_for(dev, vram_budget)
        return placement

    @classmethod
    def from_env(cls, env) -> "Placement":
        """From an Environment's device, dtype, lowvram, vram_budget and compile."""
        return cls.from_options(env.device, env.dtype, env.lowvram, getattr(env, "vram_budget", None),
                                getattr(env, "compile", "off"))

    @property
    def home(self) -> torch.device:
        """Where weights rest between uses (host memory when a manager moves them)."""
        return torch.device("cpu") if self.offload or self.memory is not None else self.device

    @property
    def prefer_tiled(self) -> bool:
        """Whether VAE encode/decode should tile: the last try after running out of memory."""
        return self.memory is not None and self.memory.level >= 2

    def key(self) -> tuple:
        return (str(self.device), tuple(str(self.dtypes[r]) for r in ROLES), self.offload)

    @contextmanager
    def use(self, module: torch.nn.Module, working_bytes: int = 0) -> Iterator[torch.nn.Module]:
        """The module on the compute device for the duration; back home afterwards (or, with a
        memory manager, kept there while it fits). ``working_bytes``: activations expected."""
        if self.memory is not None:
            with self.memory.use(module, working_bytes):
                yield module
        elif self.offload:
            module.to(self.device)
            try:
                yield module
            finally:
                module.to(self.home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            yield module

    def bring(self, module: torch.nn.Module) -> None:
        """Onto the device, for a module that runs inside another's use() (a ControlNet within
        the UNet's): under the budget when there is a manager."""
        if self.memory is not None:
            self.memory.ensure(module)
            return
        first = next(iter(module.parameters()), None)
        if first is not None and first.device != self.device:
            module.to(self.device)


class ModelCache:
    """Loaded models by key (file identity, dtypes, device, options), shared by every node
    and run of a process: a checkpoint is read once. LRU with a count bound."""

    def __init__(self, max_items: int = 4):
        self.max_items = max_items
        self._items: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.RLock()
        self.loads = 0

    def get_or_load(self, key: tuple, load: Callable[[], object]) -> object:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            value = load()
            self.loads += 1
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
