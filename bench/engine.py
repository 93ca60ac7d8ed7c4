"""Engine overhead on a synthetic 1,000-node graph of cheap nodes.

Prints: validate + plan + execute cold (per node), and a fully cached rerun (in all),
measured side by side in one run, with the goals (50 us/node cold, 10 ms cached rerun).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Annotated

from latentgraph.graph import Executor, Int, NodeRegistry, Result, ResultCache, Socket, Workflow, node
from latentgraph.graph.validate import validate


@node(category="bench", outputs=["INT"])
def Const(value: Annotated[int, Int(0)]) -> int:
    return value


@node(category="bench", outputs=["INT"])
def Add(a: Annotated[int, Socket("INT")], b: Annotated[int, Socket("INT")],
        offset: Annotated[int, Int(0, min=-1000, max=1000)]) -> int:
    return a + b + offset


@node(category="bench", output_node=True)
def Sink(value: Annotated[int, Socket("INT")]) -> Result:
    return Result(ui={"value": [value]})


def build(n: int, seed: int = 0) -> Workflow:
    """Exactly n nodes: 50 constants, a chain of Add nodes each linking the previous one and
    a random earlier node (so every node is needed), and 10 sinks on the last 10 Adds."""
    rng = random.Random(seed)
    wf = Workflow()
    consts, sinks = 50, 10
    ids = [wf.add(f"c{i}", "Const", value=i).node_id for i in range(consts)]
    adds = []
    for i in range(n - consts - sinks):
        a = adds[-1] if adds else ids[0]
        b = ids[i] if i < consts else rng.choice(ids[-200:])
        adds.append(wf.add(f"n{i}", "Add", a=[a, 0], b=[b, 0], offset=rng.randint(-5, 5)).node_id)
        ids.append(adds[-1])
    for j, t in enumerate(adds[-sinks:]):
        wf.add(f"sink{j}", "Sink", value=[t, 0])
    return wf


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    registry = NodeRegistry()
    for fn in (Const, Add, Sink):
        registry.register(fn)
    wf = build(args.nodes)
    n = len(wf)

    def cold():
        Executor(registry, cache=ResultCache()).run(wf)

    warm_ex = Executor(registry)
    warm_ex.run(wf)

    def cached():
        res = warm_ex.run(wf)
        assert not res.executed, res.executed

    def validate_only():
        validate(wf, registry)

    cold_t = timed(cold, args.repeat)
    cached_t = timed(cached, args.repeat)
    val_t = timed(validate_only, args.repeat)
    cold_med, cached_med, val_med = (statistics.median(t) for t in (cold_t, cached_t, val_t))

    print(f"graph: {n} nodes ({sum(1 for s in wf.nodes.values() if s.class_type == 'Sink')} output nodes)")
    print(f"cold   validate+plan+execute: {cold_med * 1e3:8.2f} ms  = {cold_med / n * 1e6:6.1f} us/node"
          f"   (goal < 50 us/node: {'met' if cold_med / n < 50e-6 else 'NOT met'})")
    print(f"  of which validate+plan:     {val_med * 1e3:8.2f} ms  = {val_med / n * 1e6:6.1f} us/node")
    print(f"cached rerun (executes 0):    {cached_med * 1e3:8.2f} ms in all"
          f"   (goal < 10 ms: {'met' if cached_med < 10e-3 else 'NOT met'})")
    print(f"ratio cold / cached:          {cold_med / cached_med:8.1f}x")
    print(f"(median of {args.repeat}; min cold {min(cold_t) * 1e3:.2f} ms, min cached {min(cached_t) * 1e3:.2f} ms)")


if __name__ == "__main__":
    main()
