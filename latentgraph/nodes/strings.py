"""ComfyUI's string nodes (utils/string: concatenate, substring, length, case, trim, replace,
contains, compare, regex match/extract/replace) and PreviewAny, with its names, inputs and
results (Python's own str methods and ``re``, as ComfyUI uses them).

Differences, on purpose: a pattern ``re`` cannot compile is an error naming the node and the
pattern in RegexReplace (ComfyUI raises re.error there too, but bare), and is read as "no match"
in RegexMatch and RegexExtract as in ComfyUI. The text a node builds is held to the
``prompt_chars`` budget's size times 100 (10 M characters), checked before building it where
the size is known."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from ..graph import Boolean, Combo, Int, Output, Result, Socket, String, node
from ..graph.budgets import limit

_MODULE = "comfy_extras.nodes_string"
TEXT = String(multiline=True)
# one output string: 100 x the longest prompt (a replace of every character can multiply it)
STRING_CHARS = 100


def _cap() -> int:
    return STRING_CHARS * limit("prompt_chars")


def _check_size(n: int, what: str) -> None:
    if n > _cap():
        raise ValueError(f"{what} makes a string of {n:,} characters, which exceeds the limit "
                         f"{STRING_CHARS} x prompt_chars = {_cap():,} characters")


@node(category="utils/string", display_name="Concatenate", outputs=["STRING"], python_module=_MODULE)
def StringConcatenate(string_a: Annotated[str, TEXT], string_b: Annotated[str, TEXT],
                      delimiter: Annotated[str, String("", extra={"multiline": False})]) -> str:
    """string_a, delimiter, string_b."""
    _check_size(len(string_a) + len(delimiter) + len(string_b), "StringConcatenate")
    return delimiter.join((string_a, string_b))


@node(category="utils/string", display_name="Substring", outputs=["STRING"], python_module=_MODULE)
def StringSubstring(string: Annotated[str, TEXT], start: Annotated[int, Int()],
                    end: Annotated[int, Int()]) -> str:
    """string[start:end], Python's slice: negative positions count from the end."""
    return string[start:end]


@node(category="utils/string", display_name="Length", outputs=[Output("INT", name="length")], python_module=_MODULE)
def StringLength(string: Annotated[str, TEXT]) -> int:
    """The number of characters (code points)."""
    return len(string)


_CASES = {"UPPERCASE": str.upper, "lowercase": str.lower, "Capitalize": str.capitalize, "Title Case": str.title}


@node(category="utils/string", display_name="Case Converter", outputs=["STRING"], python_module=_MODULE)
def CaseConverter(string: Annotated[str, TEXT], mode: Annotated[str, Combo(tuple(_CASES))]) -> str:
    """Changes the case with Python's upper, lower, capitalize or title."""
    return _CASES[mode](string)


_TRIMS = {"Both": str.strip, "Left": str.lstrip, "Right": str.rstrip}


@node(category="utils/string", display_name="Trim", outputs=["STRING"], python_module=_MODULE)
def StringTrim(string: Annotated[str, TEXT], mode: Annotated[str, Combo(tuple(_TRIMS))]) -> str:
    """Removes white space from both ends, the left or the right."""
    return _TRIMS[mode](string)


@node(category="utils/string", display_name="Replace", outputs=["STRING"], python_module=_MODULE)
def StringReplace(string: Annotated[str, TEXT], find: Annotated[str, TEXT], replace: Annotated[str, TEXT]) -> str:
    """Every occurrence of ``find`` replaced (an empty ``find`` inserts between all characters)."""
    count = string.count(find)
    _check_size(len(string) + count * (len(replace) - len(find)), f"StringReplace of {count:,} occurrences")
    return string.replace(find, replace)


@node(category="utils/string", display_name="Contains", outputs=[Output("BOOLEAN", name="contains")],
      python_module=_MODULE)
def StringContains(string: Annotated[str, TEXT], substring: Annotated[str, TEXT],
                   case_sensitive: Annotated[bool, Boolean(True)]) -> bool:
    """Whether ``substring`` occurs in ``string`` (compared lower-cased unless case_sensitive)."""
    if case_sensitive:
        return substring in string
    return substring.lower() in string.lower()


@node(category="utils/string", display_name="Compare", outputs=["BOOLEAN"], python_module=_MODULE)
def StringCompare(string_a: Annotated[str, TEXT], string_b: Annotated[str, TEXT],
                  mode: Annotated[str, Combo(("Starts With", "Ends With", "Equal"))],
                  case_sensitive: Annotated[bool, Boolean(True)]) -> bool:
    """Whether string_a starts with, ends with or equals string_b."""
    a, b = (string_a, string_b) if case_sensitive else (string_a.lower(), string_b.lower())
    if mode == "Equal":
        return a == b
    return a.startswith(b) if mode == "Starts With" else a.endswith(b)


def _flags(case_insensitive: bool, multiline: bool, dotall: bool) -> int:
    return ((re.IGNORECASE if case_insensitive else 0) | (re.MULTILINE if multiline else 0)
            | (re.DOTALL if dotall else 0))


@node(category="utils/string", display_name="Regex Match", outputs=[Output("BOOLEAN", name="matches")],
      python_module=_MODULE)
def RegexMatch(string: Annotated[str, TEXT], regex_pattern: Annotated[str, TEXT],
               case_insensitive: Annotated[bool, Boolean(True)], multiline: Annotated[bool, Boolean(False)],
               dotall: Annotated[bool, Boolean(False)]) -> bool:
    """Whether the pattern matches anywhere; a pattern that does not compile matches nothing."""
    try:
        return re.search(regex_pattern, string, _flags(case_insensitive, multiline, dotall)) is not None
    except re.error:
        return False


def _extract(string: str, pattern: str, mode: str, flags: int, group_index: int) -> str:
    if mode == "First Match":
        m = re.search(pattern, string, flags)
        return m.group(0) if m else ""
    if mode == "All Matches":  # with groups, findall gives tuples: ComfyUI keeps the first group
        found = re.findall(pattern, string, flags)
        return "\n".join(f[0] if isinstance(f, tuple) else f for f in found)
    if mode == "First Group":
        m = re.search(pattern, string, flags)
        return (m.group(group_index) or "") if m and len(m.groups()) >= group_index else ""
    if mode == "All Groups":
        return "\n".join(m.group(group_index) or "" for m in re.finditer(pattern, string, flags)
                         if m.groups() and len(m.groups()) >= group_index)
    return ""


@node(category="utils/string", display_name="Regex Extract", outputs=["STRING"], python_module=_MODULE)
def RegexExtract(string: Annotated[str, TEXT], regex_pattern: Annotated[str, TEXT],
                 mode: Annotated[str, Combo(("First Match", "All Matches", "First Group", "All Groups"))],
                 case_insensitive: Annotated[bool, Boolean(True)], multiline: Annotated[bool, Boolean(False)],
                 dotall: Annotated[bool, Boolean(False)],
                 group_index: Annotated[int, Int(1, min=0, max=100)]) -> str:
    """The first match, all matches, or a group of the first or every match, one per line;
    "" where nothing matches or the pattern does not compile."""
    try:
        return _extract(string, regex_pattern, mode, _flags(case_insensitive, multiline, dotall), group_index)
    except re.error:
        return ""


@node(category="utils/string", display_name="Regex Replace", outputs=["STRING"], python_module=_MODULE)
def RegexReplace(
    string: Annotated[str, TEXT], regex_pattern: Annotated[str, TEXT], replace: Annotated[str, TEXT],
    case_insensitive: Annotated[bool, Boolean(True, optional=True)] = True,
    multiline: Annotated[bool, Boolean(False, optional=True)] = False,
    dotall: Annotated[bool, Boolean(False, optional=True, tooltip=(
        "When enabled, the dot (.) character will match any character including newline characters. "
        "When disabled, dots won't match newlines."))] = False,
    count: Annotated[int, Int(0, min=0, max=100, optional=True, tooltip=(
        "Maximum number of replacements to make. Set to 0 to replace all occurrences (default). Set to 1 to "
        "replace only the first match, 2 for the first two matches, etc."))] = 0,
) -> str:
    """re.sub of the pattern (``replace`` may use \\1 or \\g<name>); count 0 replaces all."""
    try:
        compiled = re.compile(regex_pattern, _flags(case_insensitive, multiline, dotall))
        out = compiled.sub(replace, string, count=count)
    except re.error as exc:
        raise ValueError(f"RegexReplace: input 'regex_pattern' {regex_pattern[:200]!r} or input 'replace' "
                         f"is not a valid regular expression: {exc}") from exc
    _check_size(len(out), "RegexReplace")
    return out


def _preview_text(source: Any) -> str:
    """ComfyUI's text for a value: strings as they are, numbers and booleans with str, else JSON,
    else str."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    try:
        return json.dumps(source)
    except (TypeError, ValueError):
        try:
            return str(source)
        except Exception:  # a value whose __str__ fails: say so, as ComfyUI does
            return "source exists, but could not be serialized."


@node(category="utils", display_name="Preview Any", output_node=True, python_module="comfy_extras.nodes_preview_any")
def PreviewAny(source: Annotated[Any, Socket("*", extra={})]) -> Result:
    """Shows any value as text in the UI (``ui.text``)."""
    text = _preview_text(source)
    _check_size(len(text), "PreviewAny")
    return Result(ui={"text": (text,)})
