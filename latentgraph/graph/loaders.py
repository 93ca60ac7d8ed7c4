"""Reading workflow files into plain, checked data: YAML, JSON, and the text chunks of a PNG.

This module knows files and formats, not the Workflow model: it returns a Document (the parsed
data and where it came from) that ``Workflow.load`` turns into a workflow, so the dependency runs
one way, workflow.py -> loaders.py. Every read is held to the size budgets of budgets.py before
the allocation it would cause: the file size before reading, PNG chunk sizes before reading or
inflating them, nesting depth while parsing, and YAML anchors and aliases (which can make a
1 KB file expand into gigabytes) are refused outright.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import budgets
from .errors import Problem, WorkflowError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
YAML_DEPTH_SLACK = 1  # levels a YAML workflow may sit deeper than the same workflow as API JSON
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


@dataclass
class Document:
    """A parsed workflow file. ``kind``: "text" (YAML or JSON), "png_prompt" (API JSON from a
    PNG's prompt chunk) or "png_workflow" (UI JSON from its workflow chunk)."""

    data: Any
    source: str
    kind: str = "text"
    text: str | None = None        # the YAML text, for the line numbers in messages
    is_json: bool = False
    pnginfo: dict = field(default_factory=dict)  # a PNG's other JSON chunks (ComfyUI's extra_pnginfo)


# -- files ---------------------------------------------------------------------------------
def read_file(path: str | Path) -> Document:
    """A workflow file (YAML, JSON or a PNG carrying one), told apart by content."""
    path = Path(path)
    source = str(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            is_png = f.read(8) == PNG_MAGIC
            if is_png:
                budgets.check("png_file_bytes", size, source, "the PNG file")
                return _read_png(f, source)
            f.seek(0)
            text = _read_text(f, size, source, "workflow_file_bytes", "the workflow file")
    except FileNotFoundError:
        raise WorkflowError(source, "file not found") from None
    except IsADirectoryError:
        raise WorkflowError(source, "is a directory, not a workflow file") from None
    except OSError as exc:
        raise WorkflowError(source, f"cannot read the file: {exc.strerror or exc}") from None
    return parse_text(text, source)


def read_settings_yaml(path: str | Path) -> Any:
    """A YAML settings file (jobs file, extra_model_paths.yaml, the plugin config) with the
    workflow files' refusals: a size budget checked by stat, no anchors or aliases, bounded depth."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            text = _read_text(f, Path(path).stat().st_size, source, "settings_file_bytes", "the settings file")
    except OSError as exc:
        raise WorkflowError(source, f"cannot read: {exc.strerror or exc}") from None
    return parse_yaml(text, source)  # nesting is bounded while parsing


def _read_text(f, size: int, source: str, budget: str, what: str) -> str:
    """The UTF-8 text of an open file whose stat size is ``size``, held to ``budget``."""
    budgets.check(budget, size, source, what)
    # one byte past the size: a file that grew since stat is still caught (read(n) allocates
    # n bytes at once, so n is the file's size, not the budget)
    data = f.read(size + 1)
    budgets.check(budget, len(data), source, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowError(source, f"not a text file (byte {exc.start} is not UTF-8); expected YAML or JSON") from None


def parse_text(text: str, source: str = "<string>") -> Document:
    """YAML or JSON text, told apart by its first character."""
    budgets.check("workflow_file_bytes", len(text), source, "the workflow text")
    stripped = text.lstrip("\ufeff \t\r\n")
    if not stripped:
        raise WorkflowError(source, "the file is empty")
    if stripped[0] in "{[":
        return Document(parse_json(text, source), source, text=None, is_json=True)
    return Document(parse_yaml(text, source), source, text=text)


# -- JSON ----------------------------------------------------------------------------------
def parse_json(text: str, source: str) -> Any:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(source, [Problem(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno)]) from None
    except RecursionError:  # nested past Python's stack, far past the budget
        raise WorkflowError(source, budgets.over("nesting_depth", "the JSON's nesting of lists and objects")) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise WorkflowError(source, f"invalid JSON: {exc}") from None
    budgets.check_depth(data, source, "the JSON's nesting of lists and objects")
    return data


# -- YAML ----------------------------------------------------------------------------------
class _Refused(Exception):
    """Valid YAML that a workflow file may not use; carries the mark for the line."""

    def __init__(self, message: str, mark):
        super().__init__(message)
        self.message, self.mark = message, mark


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (instead of keeping the last one silently), anchors
    and aliases (an alias bomb expands a tiny file into gigabytes once written out as JSON or
    hashed) and nesting past the budget (PyYAML recurses once per level)."""

    _depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Refused(f"YAML aliases (*{event.anchor}) are not allowed in latentgraph's YAML files (they can expand a "
                           "small file into gigabytes): write the value out", event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Refused(f"YAML anchors (&{event.anchor}) are not allowed in latentgraph's YAML files (they can expand a "
                           "small file into gigabytes): write the value out", event.start_mark)
        container = isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent))
        if container:
            self._depth += 1
            # one level of slack: a workflow in YAML sits one level deeper than in API JSON
            # (`nodes:` above the node ids, `__value__` around literal lists, `meta` beside the
            # inputs); the workflow built from it is held to the API form's depth
            if self._depth > budgets.limit("nesting_depth") + YAML_DEPTH_SLACK:
                raise _Refused(budgets.over("nesting_depth", "the YAML's nesting of lists and mappings"),
                               event.start_mark)
        try:
            return super().compose_node(parent, index)
        finally:
            if container:
                self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
            except TypeError:
                continue  # unhashable key: SafeLoader reports it
            if dup:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        col = f" (column {exc.mark.column + 1})" if exc.mark else ""
        raise WorkflowError(source, [Problem(exc.message + col, line=exc.mark.line + 1 if exc.mark else None)]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = exc.problem or exc.context or "syntax error"
        col = f" (column {mark.column + 1})" if mark else ""
        raise WorkflowError(source, [Problem(f"invalid YAML: {what}{col}", line=line)]) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:  # e.g. '1e400000' as a timestamp
        raise WorkflowError(source, f"invalid YAML: {exc}") from None


def parse_yaml_value(text: str, what: str) -> Any:
    """A value given on the command line (``--set NODE.INPUT=VALUE``) read as YAML with the same
    refusals as a file; text that is not YAML stays the text. Raises ValueError when refused."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ValueError(f"{what}: {exc.message}") from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError):
        return text


def yaml_node_lines(text: str) -> dict[str, int]:
    """Line of each node id under ``nodes:`` (for messages); {} if it cannot be told."""
    try:
        root = yaml.compose(text, Loader=_StrictLoader)
    except (yaml.YAMLError, _Refused, ValueError):
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    for key, value in root.value:
        if key.value == "nodes" and isinstance(value, yaml.MappingNode):
            return {str(k.value): k.start_mark.line + 1 for k, _ in value.value}
    return {}


class _Dumper(yaml.SafeDumper):
    """Writes multi-line strings as literal blocks and never uses anchors."""

    def ignore_aliases(self, data):
        return True


def _str_representer(dumper, value: str):
    style = "|" if "\n" in value and not any(c in value for c in "\r\t") and value == value.rstrip(" ") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


def _float_representer(dumper, value: float):
    if math.isnan(value):
        return dumper.represent_scalar("tag:yaml.org,2002:float", ".nan")
    return yaml.SafeDumper.represent_float(dumper, value)


_Dumper.add_representer(str, _str_representer)
_Dumper.add_representer(float, _float_representer)


def dump_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


# -- PNG -----------------------------------------------------------------------------------
def _read_png(f, source: str) -> Document:
    """The workflow in a PNG's ``prompt`` (API JSON) or ``workflow`` (UI JSON) text chunk."""
    chunks = png_text_chunks(f, source)
    if "prompt" in chunks:
        doc = Document(parse_json(chunks["prompt"], f"{source} (prompt chunk)"), source, "png_prompt")
    elif "workflow" in chunks:
        doc = Document(parse_json(chunks["workflow"], f"{source} (workflow chunk)"), source, "png_workflow")
    else:
        raise WorkflowError(source, "the PNG carries no workflow (no 'prompt' or 'workflow' text chunk)")
    # the other JSON chunks go with it, so that the images it saves carry the same metadata
    for key, text in chunks.items():
        if key == "prompt":
            continue
        if key == "workflow" and doc.kind == "png_workflow":
            doc.pnginfo[key] = doc.data
            continue
        try:
            doc.pnginfo[key] = parse_json(text, f"{source} ({key} chunk)")
        except WorkflowError as exc:
            if not exc.problems[0].message.startswith("invalid JSON"):
                raise  # over a budget: refused like the workflow itself
            # a chunk that is not JSON (Software, parameters, ...) is not extra_pnginfo
    return doc


def png_text_chunks(f, source: str) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of the PNG open at ``f`` (past the signature), walking
    the chunk headers and skipping the pixel data, which is never decoded."""
    chunks: dict[str, str] = {}
    total = count = 0
    while True:
        head = f.read(8)
        if len(head) < 8:
            if count == 0:
                raise WorkflowError(source, "cannot read the PNG: it has no chunks")
            return chunks  # a truncated file: keep what came before the cut, as Pillow does
        length, ctype = struct.unpack(">I4s", head)
        count += 1
        budgets.check("png_chunks", count, source, "the PNG's chunk count")
        if count == 1 and ctype != b"IHDR":
            raise WorkflowError(source, "cannot read the PNG: it does not start with an IHDR chunk")
        if ctype == b"IEND":
            return chunks
        if ctype not in _TEXT_CHUNKS:
            f.seek(length + 4, 1)  # data and CRC
            continue
        budgets.check("png_text_bytes", length, source, f"the PNG's {ctype.decode()} chunk")
        data = f.read(length)
        f.seek(4, 1)
        if len(data) < length:
            return chunks
        key, text = _text_chunk(ctype, data, source)
        total += len(text)
        budgets.check("png_text_total_bytes", total, source, "the PNG's text chunks together")
        chunks[key] = text  # a repeated key: the last one wins, as with Pillow


def _text_chunk(ctype: bytes, data: bytes, source: str) -> tuple[str, str]:
    key, _, rest = data.partition(b"\0")
    name = key.decode("latin-1")
    where = f"the PNG's {ctype.decode()} chunk '{name}'"
    if ctype == b"tEXt":
        return name, rest.decode("latin-1")
    if ctype == b"zTXt":
        return name, _inflate(rest[1:], source, where).decode("latin-1")
    compressed = rest[:1] == b"\x01"
    _lang, _, rest = rest[2:].partition(b"\0")
    _translated, _, rest = rest.partition(b"\0")
    raw = _inflate(rest, source, where) if compressed else rest
    try:
        return name, raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WorkflowError(source, f"cannot read the PNG: {where} is not UTF-8 (byte {exc.start})") from None


def _inflate(data: bytes, source: str, where: str) -> bytes:
    """zlib data, inflated no further than the budget: a zip bomb stops at its first excess byte."""
    cap = budgets.limit("png_text_bytes")
    inflater, parts, size = zlib.decompressobj(), [], 0
    try:
        while data and size <= cap:  # 1 MB at a time: zlib's own buffer would double past the budget
            parts.append(inflater.decompress(data, 2**20))
            size += len(parts[-1])
            data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise WorkflowError(source, f"cannot read the PNG: {where}: {exc}") from None
    if size > cap:
        raise WorkflowError(source, budgets.over("png_text_bytes", f"{where} once inflated"))
    return b"".join(parts)


def kind_name(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "mapping", list: "list", str: "string", int: "integer", float: "number",
            bool: "boolean"}.get(type(value), type(value).__name__)
