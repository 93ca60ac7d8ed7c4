"""Size budgets for everything read from a workflow file or a request, in one table.

A small file must not grow into gigabytes once parsed, expanded or flattened, so each limit is
checked *before* the allocation it guards, and the error names the limit. The values are far
above any real workflow (ComfyUI's largest shared workflows have a few hundred nodes, a few MB
of JSON and subgraphs nested three or four deep).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Problem, WorkflowError


@dataclass(frozen=True)
class Budget:
    name: str   # how messages and the README name it
    limit: int
    unit: str   # what is counted
    why: str    # what it guards against


_TABLE = (
    Budget("workflow_file_bytes", 32 * 2**20, "bytes", "a YAML/JSON workflow file, checked with stat before reading"),
    Budget("png_file_bytes", 512 * 2**20, "bytes", "a PNG read for its workflow chunks, checked with stat"),
    Budget("png_chunks", 200_000, "chunks", "chunks walked in a PNG (the pixels are never decoded)"),
    Budget("png_text_bytes", 32 * 2**20, "bytes", "one text chunk of a PNG, after decompression"),
    Budget("png_text_total_bytes", 64 * 2**20, "bytes", "all text chunks of a PNG together, after decompression"),
    Budget("nesting_depth", 64, "levels", "lists/mappings inside each other (Python's parsers recurse)"),
    Budget("nodes", 20_000, "nodes", "nodes of a workflow, and of a UI workflow once flattened"),
    Budget("links", 200_000, "links", "links of a UI-format graph or subgraph definition"),
    Budget("subgraph_depth", 32, "levels", "UI subgraph instances inside each other"),
    Budget("link_hops", 256, "hops", "reroutes, bypassed nodes and subgraph borders one UI link passes"),
    Budget("set_value_chars", 100_000, "characters", "one --set NODE.INPUT=VALUE or --sweep NODE.INPUT=VALUES"),
    Budget("settings_file_bytes", 4 * 2**20, "bytes",
           "a YAML settings file (jobs file, extra_model_paths.yaml, the plugin config), checked with stat"),
    Budget("jobs", 100_000, "jobs", "jobs of one batch or sweep, counted before the grid is expanded"),
    Budget("image_pixels", 16384 * 16384, "pixels",
           "an image file a node loads: one frame, and all its frames together, from the header before each "
           "frame is decoded (ComfyUI's MAX_RESOLUTION squared)"),
    Budget("image_frames", 10_000, "frames",
           "frames of an image file a node loads (GIF/APNG/WebP/TIFF), counted from the header before decoding"),
    Budget("prompt_chars", 100_000, "characters", "one prompt text a node tokenizes (real prompts are < 2,000)"),
    Budget("tensor_bytes", 8 * 2**30, "bytes",
           "one tensor a node makes whose size comes from its inputs (widget sizes, batch counts, scale "
           "factors), computed from shape and dtype before allocating"),
)
BUDGETS: dict[str, Budget] = {b.name: b for b in _TABLE}


def limit(name: str) -> int:
    return BUDGETS[name].limit


def over(name: str, what: str) -> str:
    """The message for ``what`` going past budget ``name``."""
    b = BUDGETS[name]
    return f"{what} exceeds the limit {name} = {b.limit:,} {b.unit}"


def check(name: str, value: int, source: str | None, what: str, node: str | None = None,
          line: int | None = None) -> None:
    """Raise a WorkflowError naming budget ``name`` when ``value`` is above it."""
    if value > BUDGETS[name].limit:
        raise WorkflowError(source, [Problem(f"{over(name, what)} (found {value:,})", node=node, line=line)])


def check_depth(data: Any, source: str | None, what: str = "the document") -> None:
    """Refuse data nested deeper than ``nesting_depth``, walking it without recursion (so that the
    copies, hashes and dumps made of it later cannot exhaust Python's stack)."""
    cap = limit("nesting_depth")
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, (list, tuple)):
            children = value
        else:
            continue
        if depth > cap:
            raise WorkflowError(source, over("nesting_depth", what))
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list, tuple)))
