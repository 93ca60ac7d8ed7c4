"""Exceptions of the engine. Each carries what a person needs to fix the problem (file,
node, input) and renders as one readable block; the CLI prints it, the server sends the data."""

from __future__ import annotations

from dataclasses import dataclass


class LatentgraphError(Exception):
    """Base of every error latentgraph raises on purpose."""

    def format(self) -> str:
        return str(self)


class DeclarationError(LatentgraphError, TypeError):
    """A node declaration does not match its function, or clashes with another node."""


@dataclass
class Problem:
    """One thing wrong with a workflow file, located as precisely as known."""

    message: str
    node: str | None = None
    input: str | None = None
    line: int | None = None

    def where(self) -> str:
        parts = []
        if self.node is not None:
            parts.append(f"node '{self.node}'")
        if self.input is not None:
            parts.append(f"input '{self.input}'")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        return {"message": self.message, "node": self.node, "input": self.input, "line": self.line}


class WorkflowError(LatentgraphError, ValueError):
    """A workflow file could not be read or does not have a workflow's structure."""

    def __init__(self, source: str | None, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems)]
        self.source = source or "<workflow>"
        self.problems = problems
        super().__init__(self.format())

    def format(self) -> str:
        if len(self.problems) == 1:
            p = self.problems[0]
            loc = f"{self.source}:{p.line}" if p.line else self.source
            where = p.where()
            return f"{loc}: {where + ': ' if where else ''}{p.message}"
        lines = [f"{self.source}: {len(self.problems)} problems:"]
        for p in self.problems:
            where = p.where()
            line = f"line {p.line}: " if p.line else ""
            lines.append(f"  - {line}{where + ': ' if where else ''}{p.message}")
        return "\n".join(lines)


class ValidationError(LatentgraphError):
    """The workflow failed validation; ``report`` has ComfyUI's ``error`` and ``node_errors``."""

    def __init__(self, report):
        self.report = report
        super().__init__(self.format())

    def format(self) -> str:
        return self.report.format()


class NodeExecutionError(LatentgraphError):
    """A node raised while running. The run stopped; the executor stays usable."""

    def __init__(self, node_id: str, class_type: str, exc: BaseException, traceback_lines: list[str],
                 source: str | None = None, expanded_node: tuple[str, str] | None = None):
        self.node_id = node_id
        self.class_type = class_type
        self.expanded_node = expanded_node  # (id, class) of the node an expansion of node_id added that raised
        self.exception = exc
        self.exception_type = _full_type_name(type(exc))
        self.exception_message = str(exc)
        self.traceback = traceback_lines
        self.source = source
        super().__init__(self.format())

    def format(self, debug: bool = False) -> str:
        src = f"{self.source}: " if self.source else ""
        inner = (f" in node '{self.expanded_node[0]}' ({self.expanded_node[1]}) it added"
                 if self.expanded_node else "")
        head = (f"{src}node '{self.node_id}' ({self.class_type}) failed{inner}: {self.exception_type}: "
                f"{self.exception_message}")
        if not debug:
            return head
        return head + "\n" + "".join(self.traceback).rstrip()


class ExpansionError(LatentgraphError):
    """A node's expansion or lazy-input request cannot be carried out (a bad graph, duplicate
    ids, an input that does not exist); raised from the node, so the run reports it there."""


class Interrupted(LatentgraphError):
    """The run was interrupted (between nodes or at a progress tick)."""

    def __init__(self, node_id: str | None = None, class_type: str | None = None):
        self.node_id = node_id
        self.class_type = class_type
        where = f" at node '{node_id}' ({class_type})" if node_id else ""
        super().__init__(f"interrupted{where}")


def _full_type_name(cls: type) -> str:
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
