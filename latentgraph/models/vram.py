"""GPU memory: a budget for the weights kept on the compute device, least-recently-used
offload, partial loading of a network that does not fit, and out-of-memory recovery.

A ``MemoryManager`` owns the answer to "which modules are on the device". Before a module runs
(``use``) it makes room under the budget by sending the least recently used unpinned modules
home (host memory), then moves the module over; modules stay resident between uses while they
fit. A module bigger than what is left is split by layer (a layer: a module holding tensors of
its own): as many layers as fit stay resident, the rest are moved in by a forward pre-hook and
sent back by a forward hook, one layer at a time. ``run_node`` retries a node that ran out of
memory: first as planned, then with everything else freed and each module sent home after use,
then with every layer streamed and the VAE tiled, and then gives up with a clear error.

Two devices: ``TorchDevice`` (CUDA, MPS: tensors really move) and ``FakeDevice``, a pretend
accelerator of a given capacity that keeps computing on the CPU (so results are bit-identical)
while it books every tensor moved onto it, raises ``FakeOutOfMemory`` past its capacity, and
refuses to run a layer whose tensors were not moved in (what a real device's mismatch error
would say). Tests, ``--device cpu --vram-budget N`` and bench/gpu.py's dry run use it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn

log = logging.getLogger("latentgraph.vram")

GiB = 1 << 30
RESERVE_FRACTION = 0.15  # of the budget, kept free for activations (weights get the rest)
AUTO_MIN_RESERVE = GiB  # automatic budgets keep at least this much for activations
TRIES = ("models kept resident", "everything else freed and each model sent home after use",
         "each model streamed layer by layer and the VAE tiled")


class FakeOutOfMemory(RuntimeError):
    """The fake device's out-of-memory error (torch.cuda.OutOfMemoryError's stand-in)."""


class GPUOutOfMemory(RuntimeError):
    """A node ran out of device memory on every try; the message says what was resident."""


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device out-of-memory error (CUDA, MPS or the fake device)."""
    if isinstance(exc, (FakeOutOfMemory, torch.cuda.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).split("\n", 1)[0]


def fmt_bytes(n: int) -> str:
    """1.50 GiB, 12.0 MiB, 4.0 KiB or 100 B: how sizes read in messages."""
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"


def tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def own_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The parameters and buffers a module holds itself (not its children's)."""
    return [t for t in (*module._parameters.values(), *module._buffers.values()) if t is not None]


def module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of a module tree, each once (tied weights count once)."""
    seen, out = set(), []
    for m in module.modules():
        for t in own_tensors(m):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def module_bytes(module: nn.Module) -> int:
    """Parameters plus buffers in bytes: what the module takes on the device."""
    return sum(tensor_bytes(t) for t in module_tensors(module))


def layers(module: nn.Module) -> list[tuple[str, nn.Module, list[torch.Tensor]]]:
    """(name, layer, its own tensors) in module order: the units partial loading moves."""
    seen, out = set(), []
    for name, m in module.named_modules():
        ts = [t for t in own_tensors(m) if id(t) not in seen]
        seen.update(id(t) for t in ts)
        if ts:
            out.append((name or type(module).__name__, m, ts))
    return out


class TorchDevice:
    """A real accelerator (CUDA, MPS): tensors move with ``t.data = t.data.to(...)``, so every
    module sharing a tensor object (a LoRA twin shares its base's) sees the move."""

    def __init__(self, device: torch.device):
        self.torch_device = device
        self.name = str(device)

    def free_bytes(self) -> int:
        if self.torch_device.type == "cuda":
            return torch.cuda.mem_get_info(self.torch_device)[0]
        raise ValueError(f"no free-memory figure for {self.name}: give --vram-budget in GB")

    def holds(self, t: torch.Tensor) -> bool:
        dev = self.torch_device
        return t.device.type == dev.type and (dev.index is None or t.device.index == dev.index)

    def load(self, tensors: list[torch.Tensor], what: str) -> list:
        """Move tensors in; returns their host data so ``unload`` can put it back uncopied."""
        homes = []
        for t in tensors:
            homes.append(t.data)
            if not self.holds(t):
                t.data = t.data.to(self.torch_device, non_blocking=True)
        return homes

    def unload(self, tensors: list[torch.Tensor], homes: list | None = None) -> None:
        for i, t in enumerate(tensors):
            if homes is not None and homes[i].device.type == "cpu":
                t.data = homes[i]  # the weights did not change: no copy back
            elif t.device.type != "cpu":
                t.data = t.data.to("cpu")

    def book(self, nbytes: int, what: str) -> None:
        """Working memory is the real allocator's business."""

    def release(self, nbytes: int) -> None:
        pass

    def watch(self, module: nn.Module) -> None:
        pass

    def empty_cache(self) -> None:
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


class FakeDevice:
    """A pretend accelerator of ``capacity`` bytes: compute stays on the CPU, every tensor
    moved in is booked, a booking past the capacity raises FakeOutOfMemory, and a watched
    layer that runs with a tensor not moved in raises (a real device's mismatch error)."""

    def __init__(self, capacity: int, name: str = "fake"):
        self.capacity = int(capacity)
        self.name = f"{name} device of {fmt_bytes(self.capacity)}"
        self.torch_device = torch.device("cpu")
        self.allocated = 0  # bytes booked now (tensors moved in and working memory)
        self.peak = 0
        self.bytes_in = 0  # bytes moved in so far (host -> device traffic)
        self._on: dict[int, tuple[weakref.ref, int]] = {}
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()

    def free_bytes(self) -> int:
        return self.capacity - self.allocated

    def holds(self, t: torch.Tensor) -> bool:
        entry = self._on.get(id(t))
        return entry is not None and entry[0]() is t

    def book(self, nbytes: int, what: str) -> None:
        with self._lock:
            if self.allocated + nbytes > self.capacity:
                raise FakeOutOfMemory(f"{self.name}: out of memory: {what} needs {fmt_bytes(nbytes)}, "
                                      f"{fmt_bytes(self.capacity - self.allocated)} free")
            self.allocated += nbytes
            self.peak = max(self.peak, self.allocated)

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.allocated -= nbytes

    def load(self, tensors: list[torch.Tensor], what: str) -> None:
        new = [t for t in tensors if not self.holds(t)]
        nbytes = sum(tensor_bytes(t) for t in new)
        self.book(nbytes, what)
        self.bytes_in += nbytes
        for t in new:
            # a tensor freed while booked gives its bytes back (its id may be reused)
            self._on[id(t)] = (weakref.ref(t, lambda _, k=id(t): self._forget(k)), tensor_bytes(t))

    def unload(self, tensors: list[torch.Tensor], homes: list | None = None) -> None:
        for t in tensors:
            if self.holds(t):
                self._forget(id(t))

    def _forget(self, key: int) -> None:
        entry = self._on.pop(key, None)
        if entry is not None:
            self.release(entry[1])

    def watch(self, module: nn.Module) -> None:
        """Check, before each layer of ``module`` runs, that its tensors were moved in."""
        if module in self._watched:
            return
        self._watched.add(module)
        for name, layer, tensors in layers(module):
            layer.register_forward_pre_hook(self._checker(name, tensors))

    def _checker(self, name: str, tensors: list[torch.Tensor]) -> Callable:
        refs = [weakref.ref(t) for t in tensors]

        def check(_module, _args):
            away = [r() for r in refs if r() is not None and not self.holds(r())]
            if away:
                raise RuntimeError(f"{self.name}: layer {name} ran with {len(away)} of {len(refs)} tensors "
                                   f"in host memory (they were never moved to the device)")
        return check

    def empty_cache(self) -> None:
        pass


@dataclass(eq=False)
class Entry:
    """What the manager knows of one module."""

    name: str
    nbytes: int
    state: str = "home"  # home | resident | partial
    resident_bytes: int = 0
    layers_resident: int = 0
    layers_streamed: int = 0
    last_use: int = 0
    pins: int = 0  # running now (a use() not yet left): never evicted
    partial_loads: int = 0  # times it was split (a new split, not a reuse of the last one)
    hooks: list = field(default_factory=list, repr=False)


class MemoryManager:
    """Which modules are on the device, under a budget of ``budget`` bytes of which
    ``reserve`` is kept for working memory (activations) unless a use asks for more."""

    def __init__(self, device: TorchDevice | FakeDevice, budget: int, reserve: int | None = None):
        if budget <= 0:
            raise ValueError(f"a VRAM budget must be more than 0 bytes, got {budget}")
        self.device = device
        self.budget = int(budget)
        self.reserve = int(budget * RESERVE_FRACTION) if reserve is None else int(reserve)
        self.level = 0  # index into TRIES: how hard run_node is trying
        # names sent home to make room, in order (newest last; the last 256 of a long-lived server)
        self.evicted: deque[str] = deque(maxlen=256)
        self.last_needed: tuple[str, int] | None = None
        self._entries: weakref.WeakKeyDictionary[nn.Module, Entry] = weakref.WeakKeyDictionary()
        self._clock = itertools.count(1)
        self._lock = threading.RLock()

    # -- bookkeeping ---------------------------------------------------------------------
    def register(self, module: nn.Module, name: str | None = None) -> Entry:
        with self._lock:
            entry = self._entries.get(module)
            if entry is None:
                entry = Entry(name or type(module).__name__, module_bytes(module))
                self._entries[module] = entry
                self.device.watch(module)
            return entry

    def entry(self, module: nn.Module) -> Entry | None:
        return self._entries.get(module)

    def resident_bytes(self) -> int:
        return sum(e.resident_bytes for e in self._entries.values())

    def resident(self) -> list[tuple[str, int]]:
        """(name, bytes on the device) of each module with anything resident, oldest use first."""
        live = sorted((e for e in self._entries.values() if e.resident_bytes), key=lambda e: e.last_use)
        return [(e.name, e.resident_bytes) for e in live]

    # -- placing -------------------------------------------------------------------------
    @contextmanager
    def use(self, module: nn.Module, working_bytes: int = 0) -> Iterator[nn.Module]:
        """The module on the device for the duration (pinned: nothing it needs is evicted)."""
        with self._lock:
            entry = self.ensure(module, working_bytes)
            entry.pins += 1
        booked = max(working_bytes, self.reserve)
        try:
            self.device.book(booked, f"working memory of {entry.name}")  # the fake device's; real ones: no-op
        except BaseException:
            self._unpin(module, entry)
            raise
        try:
            yield module
        finally:
            self.device.release(booked)
            self._unpin(module, entry)

    def _unpin(self, module: nn.Module, entry: Entry) -> None:
        with self._lock:
            entry.pins -= 1
            if self.level > 0 and entry.pins == 0:  # recovering from an OOM: nothing stays
                self.evict(module)

    def ensure(self, module: nn.Module, working_bytes: int = 0) -> Entry:
        """Make room and move ``module`` onto the device, whole if it fits, else in part."""
        with self._lock:
            entry = self.register(module)
            entry.last_use = next(self._clock)
            self.last_needed = (entry.name, entry.nbytes)
            limit = self.budget - max(working_bytes, self.reserve)
            if self.level >= 2:
                self._partial(module, entry, 0)
                return entry
            others = self.resident_bytes() - entry.resident_bytes
            while others + entry.nbytes > limit and self._evict_lru(module):
                others = self.resident_bytes() - entry.resident_bytes
            if others + entry.nbytes <= limit:
                self._whole(module, entry)
            else:
                self._partial(module, entry, limit - others)
            return entry

    def _whole(self, module: nn.Module, entry: Entry) -> None:
        if entry.state == "partial":
            self._drop_hooks(entry)
        # always (re)load: a tensor shared with an evicted twin may have been sent home
        self.device.load(module_tensors(module), entry.name)
        if entry.state != "resident":
            entry.layers_resident, entry.layers_streamed = len(layers(module)), 0
        entry.state, entry.resident_bytes = "resident", entry.nbytes

    def _partial(self, module: nn.Module, entry: Entry, room: int) -> None:
        """Keep the first layers that fit in ``room`` less the largest streamed layer (the
        room a streamed layer needs while it runs); stream the others. The first layer always
        stays: code reads the device from it (token embeddings, conv_in)."""
        parts = layers(module)
        largest = max(sum(tensor_bytes(t) for t in ts) for _, _, ts in parts)
        plan = self._split(parts, room - largest)
        if entry.state == "partial" and plan[0] == entry.layers_resident:
            self.device.load([t for _, _, ts in parts[:plan[0]] for t in ts], entry.name)
            return  # the same split as last time: its hooks are in place
        self.evict(module)
        kept, streamed = parts[:plan[0]], parts[plan[0]:]
        self.device.load([t for _, _, ts in kept for t in ts], entry.name)
        for name, layer, tensors in streamed:
            entry.hooks += self._stream_hooks(f"{entry.name} layer {name}", layer, tensors)
        entry.state, entry.resident_bytes = "partial", plan[1]
        entry.layers_resident, entry.layers_streamed = len(kept), len(streamed)
        entry.partial_loads += 1
        log.info("%s: %d of %d layers resident (%s of %s), the rest streamed", entry.name, len(kept), len(parts),
                 fmt_bytes(plan[1]), fmt_bytes(entry.nbytes))

    @staticmethod
    def _split(parts: list, room: int) -> tuple[int, int]:
        """(how many leading layers fit in ``room`` (at least one), their bytes)."""
        count, used = 0, 0
        for _, _, ts in parts:
            n = sum(tensor_bytes(t) for t in ts)
            if count and used + n > room:
                break
            count, used = count + 1, used + n
        return count, used

    def _stream_hooks(self, what: str, layer: nn.Module, tensors: list[torch.Tensor]) -> list:
        homes: list = []

        def before(_module, _args):
            homes.append(self.device.load(tensors, what))

        def after(_module, _args, _out):
            if homes:
                self.device.unload(tensors, homes.pop())

        # prepend: in before the fake device's check; always_call: sent back even on an error
        return [layer.register_forward_pre_hook(before, prepend=True),
                layer.register_forward_hook(after, always_call=True)]

    @staticmethod
    def _drop_hooks(entry: Entry) -> None:
        for handle in entry.hooks:
            handle.remove()
        entry.hooks.clear()

    # -- sending home --------------------------------------------------------------------
    def _evict_lru(self, keep: nn.Module) -> bool:
        """Send home the least recently used unpinned module with anything resident."""
        victims = [(e.last_use, id(m), m) for m, e in self._entries.items()
                   if m is not keep and e.resident_bytes and not e.pins]
        if not victims:
            return False
        _, _, module = min(victims, key=lambda v: (v[0], v[1]))
        self.evicted.append(self._entries[module].name)
        self.evict(module)
        return True

    def evict(self, module: nn.Module) -> None:
        """Send a module home, except tensors a pinned (running) module shares."""
        with self._lock:
            entry = self._entries.get(module)
            if entry is None:
                return
            self._drop_hooks(entry)
            pinned = {id(t) for m, e in self._entries.items() if e.pins and m is not module
                      for t in module_tensors(m)}
            self.device.unload([t for t in module_tensors(module) if id(t) not in pinned])
            entry.state, entry.resident_bytes = "home", 0
            entry.layers_resident = entry.layers_streamed = 0

    def free_all(self) -> None:
        """Send home every module not running now, and give cached blocks back to the driver."""
        with self._lock:
            for module, entry in list(self._entries.items()):
                if not entry.pins and entry.resident_bytes:
                    self.evict(module)
            self.device.empty_cache()

    # -- recovering ----------------------------------------------------------------------
    def run_node(self, node_id: str, class_type: str, run: Callable[[], object]) -> object:
        """``run()``, tried once per entry of TRIES while it runs out of device memory."""
        first: tuple[list, str] | None = None
        for level in range(len(TRIES)):
            self.level = level
            try:
                return run()
            except Exception as exc:  # only device OOMs are retried; everything else goes on up
                if not is_oom(exc):
                    raise
                if first is None:
                    first = (self.resident(), str(exc).split("\n", 1)[0])
                if level + 1 < len(TRIES):  # the last failure is told by the error itself
                    log.warning("node %s (%s) ran out of device memory (%s); trying again with %s", node_id,
                                class_type, TRIES[level], TRIES[level + 1])
                self.free_all()
                last = exc
            finally:
                self.level = 0
        raise GPUOutOfMemory(self.oom_message(node_id, class_type, *first)) from last

    def oom_message(self, node_id: str, class_type: str, resident: list[tuple[str, int]], error: str) -> str:
        held = ", ".join(f"{name} {fmt_bytes(n)}" for name, n in resident) or "nothing"
        needed = f"{self.last_needed[0]} {fmt_bytes(self.last_needed[1])}" if self.last_needed else "nothing"
        return (f"out of GPU memory in node {node_id} ({class_type}) on {self.device.name} after {len(TRIES)} "
                f"tries ({'; then '.join(TRIES)}): budget {fmt_bytes(self.budget)} with "
                f"{fmt_bytes(self.reserve)} kept for working memory; resident at the first failure: {held}; "
                f"last needed: {needed}. The first error: {error}. Try a smaller image or batch; if other "
                f"programs hold GPU memory, free it or give a --vram-budget that fits what is free.")


# -- making one ----------------------------------------------------------------------------
def parse_budget(spec: object) -> float | str | None:
    """--vram-budget's value: None (none given), "auto", or GiB as a float > 0."""
    if spec is None or spec == "auto":
        return spec
    try:
        gib = float(spec)
    except (TypeError, ValueError):
        raise ValueError(f"--vram-budget: expected a number of GB (GiB, e.g. 12 or 7.5) or auto, "
                         f"got {spec!r}") from None
    if not gib > 0 or gib == float("inf"):
        raise ValueError(f"--vram-budget: the budget must be a number of GB above 0, got {spec!r}")
    return gib


def manager_for(device: torch.device, spec: object) -> MemoryManager | None:
    """The manager a placement holds for ``spec``: None (no manager: weights stay where they
    were put), ``auto`` (on CUDA: free memory at start, less a reserve; elsewhere none) or
    GiB (on the CPU it runs on a FakeDevice: a dry run of the plan, weights stay in RAM)."""
    spec = parse_budget(spec)
    if spec is None:
        return None
    if spec == "auto":
        if device.type != "cuda":
            return None  # no free-memory figure to go by: the CPU and MPS run without a manager
        target = TorchDevice(device)
        free = target.free_bytes()
        reserve = max(AUTO_MIN_RESERVE, int(free * RESERVE_FRACTION))
        return MemoryManager(target, free, min(reserve, free // 2))
    budget = int(spec * GiB)
    target = FakeDevice(budget, "simulated") if device.type == "cpu" else TorchDevice(device)
    return MemoryManager(target, budget)
