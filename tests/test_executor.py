"""The executor, checked by counting executions: caching, re-execution of descendants,
shared sub-chains, events, interrupt, failures, list semantics, memory release."""

from __future__ import annotations

import gc
import threading
import weakref

from typing import Annotated

import pytest

from latentgraph.graph import (Executor, Int, Interrupted, NodeExecutionError, Result, ResultCache, Socket,
                               ValidationError, Workflow, node)


def chain(prefix: str = "") -> Workflow:
    """a=2, b=3 -> sum -> scaled(x3) -> show; plus an independent branch c -> show2.
    ``prefix`` renames every node."""
    wf = Workflow()
    a = wf.add(prefix + "a", "Number", value=2)
    b = wf.add(prefix + "b", "Number", value=3)
    s = wf.add(prefix + "sum", "Add", a=a, b=b)
    sc = wf.add(prefix + "scaled", "Scale", x=s, factor=3)
    wf.add(prefix + "show", "Show", value=sc)
    c = wf.add(prefix + "c", "Number", value=7)
    wf.add(prefix + "show2", "Show", value=c)
    return wf


def test_first_run_executes_everything_and_values_are_right(executor, toy):
    _, calls = toy
    res = executor.run(chain())
    assert sorted(res.executed) == ["a", "b", "c", "scaled", "show", "show2", "sum"]
    assert res.cached == []
    assert res.outputs["show"]["value"] == [15]
    assert res.outputs["show2"]["value"] == [7]
    assert calls["Number"] == 3 and calls["Add"] == 1 and calls["Scale"] == 1 and calls["Show"] == 2
    assert set(res.timings) == set(res.executed) and all(t >= 0 for t in res.timings.values())


def test_unchanged_rerun_executes_nothing(executor, toy):
    _, calls = toy
    wf = chain()
    executor.run(wf)
    before = sum(calls.values())
    res = executor.run(wf)
    assert res.executed == []
    assert sorted(res.cached) == sorted(wf.nodes)
    assert sum(calls.values()) == before
    assert res.outputs["show"]["value"] == [15]  # UI output comes back from the cache


def test_reloaded_workflow_with_other_ids_is_still_cached(executor):
    executor.run(chain())
    res = executor.run(chain(prefix="other_"))
    assert res.executed == []
    assert res.outputs["other_show"]["value"] == [15]


def test_changed_constant_reruns_exactly_its_descendants(executor, toy):
    _, calls = toy
    wf = chain()
    executor.run(wf)
    wf.set("b.value", 4)
    res = executor.run(wf)
    assert sorted(res.executed) == ["b", "scaled", "show", "sum"]
    assert res.outputs["show"]["value"] == [18]
    wf.set("scaled.factor", 5)
    res = executor.run(wf)
    assert sorted(res.executed) == ["scaled", "show"]
    assert res.outputs["show"]["value"] == [30]
    # back to an earlier value: everything is still in the cache
    wf.set("b.value", 3)
    wf.set("scaled.factor", 3)
    res = executor.run(wf)
    assert res.executed == []
    assert res.outputs["show"]["value"] == [15]


def test_identical_subchains_under_different_ids_execute_once(executor, toy):
    _, calls = toy
    wf = Workflow()
    for prefix in ("left", "right"):
        x = wf.add(f"{prefix}_x", "Number", value=5)
        y = wf.add(f"{prefix}_y", "Scale", x=x, factor=4)
        wf.add(f"{prefix}_show", "Show", value=y, label=prefix)
    res = executor.run(wf)
    assert calls["Number"] == 1 and calls["Scale"] == 1
    assert calls["Show"] == 2  # the labels differ, so the two Show nodes differ
    assert len(res.executed) == 4 and len(res.cached) == 2
    assert res.outputs["left_show"]["value"] == res.outputs["right_show"]["value"] == [20]


def test_non_cacheable_node_and_its_descendants_always_run(executor, toy):
    _, calls = toy
    wf = Workflow()
    n = wf.add("n", "Number", value=1)
    t = wf.add("tick", "Tick", x=n)
    wf.add("show", "Show", value=t)
    first = executor.run(wf)
    second = executor.run(wf)
    assert "tick" in second.executed and "show" in second.executed and "n" not in second.executed
    assert first.outputs["show"]["value"] == [2] and second.outputs["show"]["value"] == [3]


def test_file_identity_is_part_of_the_key(executor, toy, env):
    _, calls = toy
    path = env.input_dir / "a.txt"
    path.write_text("one")
    wf = Workflow()
    r = wf.add("read", "ReadText", path="a.txt")
    wf.add("show", "Show", value=r)
    assert executor.run(wf).outputs["show"]["value"] == ["one"]
    assert executor.run(wf).executed == []
    path.write_text("three")  # new size and mtime
    res = executor.run(wf)
    assert sorted(res.executed) == ["read", "show"]
    assert res.outputs["show"]["value"] == ["three"]


def test_events_follow_comfyui_order_and_fields(executor):
    events = []
    wf = Workflow()
    n = wf.add("n", "Number", value=1)
    s = wf.add("slow", "SlowCount", x=n, steps=3)
    wf.add("show", "Show", value=s)
    executor.run(wf, prompt_id="p1", listener=lambda kind, data: events.append((kind, data)))
    kinds = [k for k, _ in events]
    assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
    assert kinds[-2:] == ["execution_success", "executing"]
    assert events[-1][1]["node"] is None
    executing = [d["node"] for k, d in events if k == "executing" and d["node"]]
    assert executing == ["n", "slow", "show"]
    progress = [(d["value"], d["max"], d["node"]) for k, d in events if k == "progress"]
    assert progress == [(1, 3, "slow"), (2, 3, "slow"), (3, 3, "slow")]
    executed = [d for k, d in events if k == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "show" and executed[0]["output"]["value"] == [4]
    assert all(d["prompt_id"] == "p1" for _, d in events)
    # second run: cached list names every node, and the output node's UI is sent again
    events.clear()
    executor.run(wf, prompt_id="p2", listener=lambda kind, data: events.append((kind, data)))
    cached = [d for k, d in events if k == "execution_cached"]
    assert cached[0]["nodes"] == ["n", "slow", "show"]
    assert [k for k, _ in events if k == "executing" and _["node"]] == []
    assert [d["output"]["value"] for k, d in events if k == "executed"] == [[4]]


def test_failing_node_stops_the_run_then_a_good_run_works(executor, toy):
    _, calls = toy
    events = []
    wf = Workflow()
    n = wf.add("n", "Number", value=1)
    f = wf.add("bad", "Fail", x=n, message="kaput")
    wf.add("show", "Show", value=f)
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, listener=lambda k, d: events.append((k, d)))
    err = info.value
    assert err.node_id == "bad" and err.class_type == "Fail"
    assert err.exception_type == "RuntimeError" and err.exception_message == "kaput"
    assert any("raise RuntimeError(message)" in line for line in err.traceback)
    error_events = [d for k, d in events if k == "execution_error"]
    assert len(error_events) == 1
    data = error_events[0]
    assert data["node_id"] == "bad" and data["node_type"] == "Fail" and data["executed"] == ["n"]
    assert data["exception_message"] == "kaput" and data["current_inputs"]["x"] == ["1"]
    assert "execution_success" not in [k for k, _ in events]
    assert calls["Show"] == 0
    # the executor is still usable; the good upstream result was cached
    wf.set("bad.message", "x")
    wf.remove("bad")
    wf.set("show.value", n)
    res = executor.run(wf)
    assert res.executed == ["show"] and res.outputs["show"]["value"] == [1]


def test_interrupt_at_a_progress_tick(executor, toy):
    registry, calls = toy
    wf = Workflow()
    n = wf.add("n", "Number", value=1)
    s = wf.add("slow", "SlowCount", x=n, steps=50, wait=True)
    wf.add("show", "Show", value=s)
    events = []
    errors = []

    def worker():
        try:
            executor.run(wf, listener=lambda k, d: events.append((k, d)))
        except Interrupted as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    for _ in range(200):  # wait for step 1
        if any(k == "progress" for k, _ in events):
            break
        threading.Event().wait(0.01)
    executor.interrupt()
    registry.gate.set()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1 and errors[0].node_id == "slow"
    progress = [d["value"] for k, d in events if k == "progress"]
    assert progress == [1]  # stopped at the next tick
    interrupted = [d for k, d in events if k == "execution_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["node_id"] == "slow" and interrupted[0]["executed"] == ["n"]
    assert calls["Show"] == 0
    # next run starts clean and finishes
    registry.gate.set()
    wf.set("slow.wait", False)
    res = executor.run(wf)
    assert res.outputs["show"]["value"] == [51]


def test_interrupt_between_nodes(executor, toy):
    _, calls = toy
    wf = chain()

    started = []

    def stop_during_sum(kind, data):
        if kind == "executing" and data["node"]:
            started.append(data["node"])
            if data["node"] == "sum":
                executor.interrupt()

    with pytest.raises(Interrupted) as info:
        executor.run(wf, listener=stop_during_sum)
    # 'sum' finished (nodes are not cut in half); the next node in the order never started
    assert calls["Add"] == 1 and calls["Scale"] == 0
    assert started[-1] == "sum" and info.value.node_id not in started


def test_list_outputs_map_downstream_nodes(executor, toy):
    _, calls = toy
    wf = Workflow()
    r = wf.add("range", "Range", n=4)
    sc = wf.add("scale", "Scale", x=r, factor=10)
    total = wf.add("sum", "Sum", items=sc)
    wf.add("show_all", "Show", value=sc)
    wf.add("show_sum", "Show", value=total)
    res = executor.run(wf, targets=["show_all", "show_sum", "scale"])
    assert calls["Scale"] == 4  # once per item
    assert calls["Sum"] == 1  # input_is_list: once with the whole list
    assert res.outputs["show_all"]["value"] == [0, 10, 20, 30]
    assert res.outputs["show_sum"]["value"] == [60]
    assert res.get("scale") == [0, 10, 20, 30]


def test_targets_return_values_and_need_no_output_node(executor):
    wf = chain()
    res = executor.run(wf, targets=["sum"])
    assert res.executed == ["a", "b", "sum"] and res.get("sum") == 5
    concat = Workflow()
    concat.add("c", "Concat", a="x", b="y", sep="-")
    res = executor.run(concat, targets=["c"])
    assert res.get("c", 0) == "x-y" and res.get("c", 1) == 3


def test_hidden_inputs(executor):
    wf = chain()
    wf.add("who", "WhoAmI")
    res = executor.run(wf)
    assert res.outputs["who"]["me"] == ["who"]
    assert res.outputs["who"]["nodes"] == sorted(wf.nodes)


def test_lru_bounds_entries_and_bytes(toy, env):
    registry, calls = toy
    cache = ResultCache(max_entries=3, max_bytes=10_000)
    ex = Executor(registry, env, cache=cache)
    for v in range(5):
        wf = Workflow()
        wf.add("n", "Number", value=v)
        ex.run(wf, targets=["n"])
    assert len(cache) == 3
    # the oldest values were evicted: value 0 runs again, value 4 does not
    wf = Workflow()
    wf.add("n", "Number", value=4)
    assert ex.run(wf, targets=["n"]).executed == []
    wf.set("n.value", 0)
    assert ex.run(wf, targets=["n"]).executed == ["n"]
    # an entry over the byte bound is not kept, but the run still gets its value
    big = Workflow()
    big.add("big", "Big", n=50_000)
    res = ex.run(big, targets=["big"])
    assert len(res.get("big")) == 50_000
    assert ex.run(big, targets=["big"]).executed == ["big"]
    assert cache.nbytes <= 10_000


def test_evicted_upstream_reruns_only_what_is_needed(toy, env):
    registry, calls = toy
    cache = ResultCache()
    ex = Executor(registry, env, cache=cache)
    wf = chain()
    ex.run(wf)
    cache.clear()
    res = ex.run(wf)
    assert sorted(res.executed) == sorted(wf.nodes)


def test_outputs_not_kept_are_released_after_their_last_consumer(toy, env):
    registry, _ = toy
    refs = []

    class Blob(bytearray):
        pass

    @node(outputs=["BLOB"])
    def MakeBlob(n: Annotated[int, Int(1)]) -> object:
        blob = Blob(n)
        refs.append(weakref.ref(blob))
        return blob

    alive_during_last = []

    @node(outputs=["INT"])
    def Length(b: Annotated[object, Socket("BLOB")]) -> int:
        return len(b)

    @node(output_node=True)
    def Probe(x: Annotated[int, Socket("INT")]) -> Result:
        gc.collect()
        alive_during_last.append(refs[0]() is not None)
        return Result(ui={"x": [x]})

    for fn in (MakeBlob, Length, Probe):
        registry.register(fn)
    ex = Executor(registry, env, cache=ResultCache(max_entries=100, max_bytes=1000))  # the blob is too big to keep
    wf = Workflow()
    b = wf.add("blob", "MakeBlob", n=100_000)
    ln = wf.add("len", "Length", b=b)
    wf.add("probe", "Probe", x=ln)
    res = ex.run(wf)
    assert res.outputs["probe"]["x"] == [100_000]
    assert alive_during_last == [False]  # released once 'len' had read it


def test_validation_error_runs_nothing(executor, toy):
    _, calls = toy
    wf = chain()
    wf.set("scaled.factor", 99)
    with pytest.raises(ValidationError):
        executor.run(wf)
    assert sum(calls.values()) == 0


def test_run_accepts_api_dicts_and_paths(executor, tmp_path):
    api = chain().to_api(executor.registry)
    assert executor.run(api).outputs["show"]["value"] == [15]
    path = tmp_path / "flow.yaml"
    path.write_text(chain().to_yaml(executor.registry))
    res = executor.run(str(path))
    assert res.executed == [] and res.outputs["show"]["value"] == [15]
