"""Device and dtype placement, the model cache, and the low-memory mode.

Chosen once per front door (``--device``, ``--dtype``, ``--lowvram``) and handed to nodes as
an object; nothing here is a global. In low-memory mode weights stay on the CPU and a model
moves to the device only while it runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

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
    """Where models run and in which dtypes; ``offload`` is the low-memory mode."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtypes: dict[str, torch.dtype] = field(default_factory=lambda: {r: torch.float32 for r in ROLES})
    offload: bool = False

    @classmethod
    def from_options(cls, device: str = "auto", dtype: str = "auto", lowvram: bool = False) -> "Placement":
        dev = resolve_device(device)
        return cls(dev, resolve_dtypes(dev, dtype), lowvram and dev.type != "cpu")

    @property
    def home(self) -> torch.device:
        """Where weights rest between uses."""
        return torch.device("cpu") if self.offload else self.device

    def key(self) -> tuple:
        return (str(self.device), tuple(str(self.dtypes[r]) for r in ROLES), self.offload)

    @contextmanager
    def use(self, module: torch.nn.Module) -> Iterator[torch.nn.Module]:
        """The module on the compute device for the duration; back home afterwards."""
        if self.offload:
            module.to(self.device)
            try:
                yield module
            finally:
                module.to(self.home)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        else:
            yield module


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
