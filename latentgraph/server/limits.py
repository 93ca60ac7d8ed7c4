"""What every request may carry: JSON bodies (finite numbers, bounded nesting), ids, and
integer query parameters in range. Each check raises ``BadInput`` with the message the client
gets in its 400 response, naming the field and the limit."""

from __future__ import annotations

import json
import math
import re

MAX_JSON_DEPTH = 64  # nesting of arrays/objects in a request body (a UI workflow needs about 12)
MAX_ID_LENGTH = 128  # prompt_id, client_id, clientId
MAX_TARGETS = 10_000  # partial_execution_targets
MAX_NUMBER = 2.0 ** 53  # a prompt number beyond this loses its integer identity as a float
# prompt ids name the history file: letters, digits, '-', '_', '.', never starting with '.'
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


class BadInput(ValueError):
    """A request field is missing, of the wrong type or out of range (a 400)."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadInput(f"numbers must be finite; {text[:40]!r} is not")
    return value


def _no_constant(text: str):
    raise BadInput(f"{text} is not JSON (numbers must be finite)")


def parse_json(raw: bytes | str):
    """``json.loads`` that refuses NaN, Infinity, numbers that overflow to infinity and
    nesting deeper than MAX_JSON_DEPTH (so nothing later recurses without end)."""
    try:
        value = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except BadInput:
        raise
    except RecursionError:
        raise BadInput(f"the JSON is nested more than {MAX_JSON_DEPTH} levels deep (MAX_JSON_DEPTH)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"the body is not valid JSON: {exc}") from None
    check_depth(value)
    return value


def check_depth(value, limit: int = MAX_JSON_DEPTH) -> None:
    """BadInput if arrays/objects nest deeper than ``limit`` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise BadInput(f"the JSON is nested more than {limit} levels deep (MAX_JSON_DEPTH)")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def optional_id(value, name: str, file_safe: bool = False) -> str | None:
    """A client or prompt id: None, or a string of 1..MAX_ID_LENGTH characters (file-name safe
    when asked); an empty string counts as absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a string, not {type(value).__name__}")
    if len(value) > MAX_ID_LENGTH:
        raise BadInput(f"{name} is longer than {MAX_ID_LENGTH} characters (MAX_ID_LENGTH)")
    if file_safe and not _SAFE_ID.fullmatch(value):
        raise BadInput(f"{name} {value!r} may hold only letters, digits, '-', '_' and '.', and must not "
                       f"start with '.' (it names the history file)")
    if not file_safe and any(ord(c) < 32 for c in value):
        raise BadInput(f"{name} must not contain control characters")
    return value


def prompt_number(value) -> float | None:
    """The body's ``number``: None, or a finite number within ±MAX_NUMBER (booleans refused)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadInput(f"number must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or abs(value) > MAX_NUMBER:
        raise BadInput(f"number must be a finite number within ±2**53, not {value!r}")
    return float(value)


def optional_bool(value, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadInput(f"{name} must be true or false, not {type(value).__name__}")
    return value


def query_int(query, name: str, default: int | None, lo: int, hi: int) -> int | None:
    """An integer query parameter in [lo, hi]; absent or empty gives ``default``."""
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > 20 or not re.fullmatch(r"[+-]?\d+", raw.strip()):
        raise BadInput(f"{name} must be an integer, not {raw[:40]!r}")
    value = int(raw)
    if not lo <= value <= hi:
        raise BadInput(f"{name} must be between {lo} and {hi}, not {value}")
    return value
