"""A safetensors file's JSON header and ``__metadata__``, read without torch: the 8-byte
little-endian length is checked against a budget and the file's size before the header is."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

MAX_HEADER_BYTES = 64 * 2**20  # a safetensors header read for its metadata (ComfyUI: 1 MiB for /view_metadata, 8 MiB for covers)


def read_header(path: Path, budget: int = MAX_HEADER_BYTES) -> dict | None:
    """The JSON header of a safetensors file; None when the file has none, or one longer than
    ``budget`` bytes or than the file (checked before reading it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if length > budget or length > os.fstat(fh.fileno()).st_size - 8:
                return None
            raw = fh.read(length)
    except OSError:
        return None
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return header if isinstance(header, dict) else None


def read_metadata(path: Path) -> dict | None:
    """The ``__metadata__`` mapping of a safetensors file, or None."""
    header = read_header(path)
    meta = header.get("__metadata__") if header is not None else None
    return meta if isinstance(meta, dict) else None
