"""The result cache: node outputs by Merkle key, an LRU bounded by entries and bytes.

A node's key hashes its class, version, constant inputs, the keys (and output slots) of the
nodes it links from, and its fingerprint (a file's identity). Node ids are not part of it,
so identical sub-chains share one entry and an unchanged workflow finds everything.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = (ctypes.c_size_t,), ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Give freed memory back to the system after caches were dropped: collect reference
    cycles (a module graph holds some), then ask glibc to return its free heap pages, which it
    otherwise keeps for reuse (after a model is freed, the RSS would stay where it was).
    Returns whether the allocator was asked (False where it has no malloc_trim)."""
    gc.collect()
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = _total_memory() // 2


def canonical(value: Any) -> Any:
    """A hashable, order-independent form of a constant (dict keys sorted)."""
    if isinstance(value, dict):
        return ("d", tuple(sorted((str(k), canonical(v)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("l", tuple(canonical(v) for v in value))
    return value


def make_key(class_type: str, version: int, consts: dict, upstream: tuple, extra: Any = None) -> str:
    """Merkle key of a node: 32 hex digits of BLAKE2b over a canonical repr."""
    items = tuple(sorted((k, canonical(v)) for k, v in consts.items()))
    text = repr((class_type, version, items, upstream, extra))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def estimate_nbytes(obj: Any, _depth: int = 0, _seen: set | None = None) -> int:
    """Roughly how much memory ``obj`` holds: tensors and arrays by their buffers, modules by
    their parameters, containers by their items."""
    if _seen is None:
        _seen = set()
    if id(obj) in _seen or _depth > 6:
        return 0
    _seen.add(id(obj))
    custom = getattr(obj, "latentgraph_nbytes", None)
    if isinstance(custom, int):
        return custom
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):  # torch.Tensor
        return int(obj.element_size() * obj.nelement())
    nbytes = getattr(obj, "nbytes", None)
    if isinstance(nbytes, int):  # numpy arrays
        return nbytes
    if hasattr(obj, "parameters") and hasattr(obj, "buffers"):  # torch.nn.Module
        return sum(estimate_nbytes(t, _depth + 1, _seen) for t in [*obj.parameters(), *obj.buffers()])
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(estimate_nbytes(v, _depth + 1, _seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sys.getsizeof(obj) + sum(estimate_nbytes(v, _depth + 1, _seen) for v in obj)
    return sys.getsizeof(obj)


@dataclass
class CacheEntry:
    outputs: tuple  # one list of values per output slot
    ui: dict | None
    nbytes: int


class ResultCache:
    """LRU of node results. Thread-safe. An entry larger than ``max_bytes`` is not kept."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, outputs: tuple, ui: dict | None) -> bool:
        """Keep a result; False when it is too large to keep at all."""
        size = sum(estimate_nbytes(v) for v in outputs) + (estimate_nbytes(ui) if ui else 0)
        if size > self.max_bytes or self.max_entries <= 0:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = CacheEntry(outputs, ui, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
