"""Toy nodes (arithmetic, strings) that exercise the engine without any model.

``make_toy_registry()`` returns a registry and a Counter of how many times each node type's
function ran, so tests can count executions directly as well as through RunResult."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Annotated

from latentgraph.graph import (Boolean, Combo, Float, Hidden, Int, NodeContext, NodeRegistry, Output, Result,
                               Socket, String, file_identity, node)

NUM = Socket("INT")
TXT = Socket("STRING")


def make_toy_registry():
    calls: Counter = Counter()
    gate = threading.Event()  # SlowCount waits on it between steps when asked to

    @node(category="toy", outputs=["INT"])
    def Number(value: Annotated[int, Int(0, min=-1000, max=1000)]) -> int:
        """An integer."""
        calls["Number"] += 1
        return value

    @node(category="toy", outputs=["INT"])
    def Add(a: Annotated[int, NUM], b: Annotated[int, NUM]) -> int:
        calls["Add"] += 1
        return a + b

    @node(category="toy", outputs=["INT"])
    def Scale(x: Annotated[int, NUM], factor: Annotated[int, Int(2, min=0, max=10)]) -> int:
        calls["Scale"] += 1
        return x * factor

    @node(category="toy", outputs=[("text", "STRING"), ("length", "INT")])
    def Concat(a: Annotated[str, String("")], b: Annotated[str, String("", multiline=True)],
               sep: Annotated[str, Combo([" ", "-", ""], default=" ")]) -> tuple:
        calls["Concat"] += 1
        text = f"{a}{sep}{b}"
        return text, len(text)

    @node(category="toy", outputs=["FLOAT"])
    def Ratio(x: Annotated[float, Float(1.0, min=0.0, max=10.0, step=0.1)],
              invert: Annotated[bool, Boolean(False)]) -> float:
        calls["Ratio"] += 1
        return 1.0 / x if invert else x

    @node(category="toy", output_node=True)
    def Show(value: Annotated[object, Socket("*")],
             label: Annotated[str | None, String("", optional=True)] = None) -> Result:
        calls["Show"] += 1
        return Result(ui={"value": [value if isinstance(value, (int, float, str)) else repr(value)],
                          "label": [label or ""]})

    @node(category="toy", outputs=["INT"])
    def Fail(x: Annotated[int, NUM], message: Annotated[str, String("boom")]) -> int:
        calls["Fail"] += 1
        raise RuntimeError(message)

    @node(category="toy", outputs=["INT"], cacheable=False)
    def Tick(x: Annotated[int, NUM]) -> int:
        """Not cacheable: runs every time."""
        calls["Tick"] += 1
        return x + calls["Tick"]

    @node(category="toy", outputs=["INT"])
    def SlowCount(x: Annotated[int, NUM], steps: Annotated[int, Int(5, min=1, max=1000)],
                  wait: Annotated[bool, Boolean(False)], ctx: NodeContext) -> int:
        """Reports progress each step; with wait, blocks on the test's gate after step 1."""
        calls["SlowCount"] += 1
        for i in range(steps):
            ctx.progress(i + 1, steps)
            if wait and i == 0:
                gate.wait(10)
        return x + steps

    @node(category="toy", outputs=[Output("INT", "items", is_list=True)])
    def Range(n: Annotated[int, Int(3, min=0, max=100)]) -> list:
        calls["Range"] += 1
        return list(range(n))

    @node(category="toy", outputs=["INT"], input_is_list=True)
    def Sum(items: Annotated[list, NUM]) -> int:
        calls["Sum"] += 1
        return sum(items)

    def _fp(path, env):
        return file_identity(env.input_dir / path)

    def _check(path, env):
        return None if (env.input_dir / path).is_file() else f"no file {path} in {env.input_dir}"

    @node(category="toy", outputs=["STRING"], fingerprint=_fp, validate=_check)
    def ReadText(path: Annotated[str, String("a.txt")], ctx: NodeContext) -> str:
        calls["ReadText"] += 1
        return (ctx.env.input_dir / path).read_text()

    @node(category="toy", output_node=True)
    def WhoAmI(me: Annotated[str, Hidden("UNIQUE_ID")], prompt: Annotated[dict, Hidden("PROMPT")]) -> Result:
        calls["WhoAmI"] += 1
        return Result(ui={"me": [me], "nodes": sorted(prompt)})

    @node(category="toy", outputs=["INT"], version=2)
    def Big(n: Annotated[int, Int(1, min=1, max=10_000_000)]) -> bytes:
        """Returns n bytes (for cache size tests)."""
        calls["Big"] += 1
        return bytes(n)

    registry = NodeRegistry()
    for fn in (Number, Add, Scale, Concat, Ratio, Show, Fail, Tick, SlowCount, Range, Sum, ReadText, WhoAmI, Big):
        registry.register(fn, python_module="custom_nodes.toy", source="tests")
    registry.gate = gate
    return registry, calls
