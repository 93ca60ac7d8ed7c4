"""Primitive value nodes (ComfyUI's nodes_primitive): a constant as an output, so one value
can feed several widget inputs."""

from __future__ import annotations

import sys
from typing import Annotated

from ..graph import Boolean, Float, Int, String, node

CATEGORY = "utils/primitive"


@node(category=CATEGORY, display_name="Int", outputs=["INT"])
def PrimitiveInt(value: Annotated[int, Int(0, min=-sys.maxsize, max=sys.maxsize, control_after_generate=True)]) -> int:
    """An integer constant."""
    return value


@node(category=CATEGORY, display_name="Float", outputs=["FLOAT"])
def PrimitiveFloat(value: Annotated[float, Float(0.0, min=-sys.maxsize, max=sys.maxsize)]) -> float:
    """A floating-point constant."""
    return value


@node(category=CATEGORY, display_name="String", outputs=["STRING"])
def PrimitiveString(value: Annotated[str, String("")]) -> str:
    """A one-line string constant."""
    return value


@node(category=CATEGORY, display_name="String (Multiline)", outputs=["STRING"])
def PrimitiveStringMultiline(value: Annotated[str, String("", multiline=True)]) -> str:
    """A multi-line string constant."""
    return value


@node(category=CATEGORY, display_name="Boolean", outputs=["BOOLEAN"])
def PrimitiveBoolean(value: Annotated[bool, Boolean(False)]) -> bool:
    """A boolean constant."""
    return value
