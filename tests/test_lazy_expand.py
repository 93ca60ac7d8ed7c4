"""Lazy inputs, node expansion and execution blockers, as ComfyUI V1 packs use them: a lazy
switch, a lazy input whose value is cached, an expansion made with GraphBuilder, a loop that
expands into itself, expanded nodes cached by their inputs, blockers with and without a
message, IS_CHANGED with linked inputs, and the errors a wrong expansion or request gets."""

from __future__ import annotations

import logging

import pytest

from latentgraph.graph import Environment, Executor, NodeExecutionError, Workflow
from latentgraph.graph.errors import ValidationError
from latentgraph.graph.expansion import Blocker, GraphBuilder, add_graph_prefix, is_link
from latentgraph.graph.registry import NodeRegistry
from latentgraph.plugins.comfy_v1 import node_def

CALLS: list[tuple] = []


class Number:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -1000, "max": 1000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        CALLS.append(("Number", value))
        return (value,)


class AddOne:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        CALLS.append(("AddOne", value))
        return (value + 1,)


class Show:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("*", {})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    def run(self, value):
        CALLS.append(("Show", value))
        return {"ui": {"text": [repr(value)]}}


class LazySwitch:
    """The way control-flow packs write it: both branches lazy, the check asks for one."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"switch": ("BOOLEAN", {"default": True}),
                             "on_true": ("INT", {"lazy": True}), "on_false": ("INT", {"lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def check_lazy_status(self, switch, on_true=None, on_false=None):
        CALLS.append(("check", switch, on_true, on_false))
        return ["on_true"] if switch else ["on_false"]

    def run(self, switch, on_true=None, on_false=None):
        return (on_true if switch else on_false,)


class LazyPeek:
    """Asks for nothing: shows what it was given without asking."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"lazy": True}), "tag": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    def check_lazy_status(self, tag, a=None):
        return []

    def run(self, tag, a=None):
        return {"ui": {"text": [repr(a)]}}


class AddN:
    """Expands into a chain of ``n`` AddOne nodes made with GraphBuilder."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "n": ("INT", {"default": 3, "min": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, n):
        graph = GraphBuilder()
        current = None
        for _ in range(n):
            current = graph.node("AddOne", value=current.out(0) if current else value)
        return {"result": (current.out(0),), "expand": graph.finalize()}


class AddNFromLink:
    """As AddN, but the chain starts from the node's own input link (hidden PROMPT/UNIQUE_ID, as
    loop packs read their upstream)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "n": ("INT", {"default": 2, "min": 1})},
                "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, n, prompt, unique_id):
        start = prompt[unique_id]["inputs"]["value"]  # the link itself: [node, output]
        graph = GraphBuilder()
        current = start
        for _ in range(n):
            current = graph.node("AddOne", value=current).out(0)
        return {"result": (current,), "expand": graph.finalize()}


class CountDown:
    """A loop: while n > 0 it expands into AddOne -> CountDown(n - 1) and returns that."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "n": ("INT", {"default": 3, "min": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, n):
        CALLS.append(("CountDown", value, n))
        if n == 0:
            return (value,)
        graph = GraphBuilder()
        step = graph.node("AddOne", value=value)
        inner = graph.node("CountDown", value=step.out(0), n=n - 1)
        return {"result": (inner.out(0),), "expand": graph.finalize()}


class Gate:
    """Blocks its output when closed: with a message, or silently."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "open": ("BOOLEAN", {"default": True}),
                             "message": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("INT", "INT")
    FUNCTION = "run"

    def run(self, value, open, message):  # noqa: A002 - the input's name
        if open:
            return (value, value)
        return {"result": Blocker(message or None)}


class BadExpansion:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"kind": (["duplicate", "unknown", "cycle", "dangling", "bad_input", "raises", "boom"],)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, kind):
        if kind == "duplicate":
            return {"result": (["n", 0],), "expand": {"n": {"class_type": "Number", "inputs": {"value": 1}}}}
        if kind == "unknown":
            return {"result": (["x.1", 0],), "expand": {"x.1": {"class_type": "NoSuchNode", "inputs": {}}}}
        if kind == "cycle":
            return {"result": (["c.1", 0],), "expand": {
                "c.1": {"class_type": "AddOne", "inputs": {"value": ["c.2", 0]}},
                "c.2": {"class_type": "AddOne", "inputs": {"value": ["c.1", 0]}}}}
        if kind == "raises":  # a node it adds fails when it runs (and expands once more on the way)
            return {"result": (["r.1", 0],), "expand": {"r.1": {"class_type": "BadExpansion",
                                                                 "inputs": {"kind": "boom"}}}}
        if kind == "boom":
            return {"result": (["r.2", 0],), "expand": {"r.2": {"class_type": "Boom", "inputs": {}}}}
        if kind == "bad_input":
            return {"result": (["b.1", 0],), "expand": {"b.1": {"class_type": "Number", "inputs": {"value": 5000}}}}
        return {"result": (["nowhere", 0],), "expand": {"d.1": {"class_type": "Number", "inputs": {"value": 1}}}}


class Boom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self):
        raise ValueError("boom")


class ConstExpansion:
    """controlnet_aux's way: a value it holds (not a link) given to a socket input of a node it adds."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 41})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return {"result": (["k.1", 0],), "expand": {"k.1": {"class_type": "Unbox", "inputs": {"box": {"n": value}}}}}


class Unbox:
    """A node with an input of a pack's own type: only a link gives it one in a prompt."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"box": ("NUMBOX",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, box):
        CALLS.append(("Unbox", box))
        return (box["n"] + 1,)


class AskUnconnected:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 1})}, "optional": {"extra": ("INT", {"lazy": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def check_lazy_status(self, value, extra=None):
        return ["extra"]

    def run(self, value, extra=None):
        return (value,)


class Changed:
    """IS_CHANGED takes a linked input: ComfyUI calls it with None for it."""

    SEEN: list = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"forceInput": True}), "label": ("STRING", {"default": "a"})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def IS_CHANGED(cls, value, label):
        cls.SEEN.append((value, label))
        if label == "raise":
            raise RuntimeError("cannot tell")
        return label

    def run(self, value, label):
        CALLS.append(("Changed", value, label))
        return (value,)


CLASSES = [Number, AddOne, Show, LazySwitch, LazyPeek, AddN, AddNFromLink, CountDown, Gate, BadExpansion,
           AskUnconnected, Changed, ConstExpansion, Unbox, Boom]


@pytest.fixture
def ex(tmp_path):
    registry = NodeRegistry()
    for cls in CLASSES:
        registry.register(node_def(cls.__name__, cls, None, pack="flow", source="tests"))
    CALLS.clear()
    Changed.SEEN.clear()
    env = Environment(output_dir=tmp_path / "out", temp_dir=tmp_path / "temp", device="cpu")
    return Executor(registry, env)


def _run(ex, prompt: dict, events: list | None = None):
    listener = (lambda kind, data: events.append((kind, data))) if events is not None else None
    return ex.run(Workflow.from_api(prompt), listener=listener)


def _switch_prompt(switch: bool) -> dict:
    return {"a": {"class_type": "Number", "inputs": {"value": 1}},
            "b": {"class_type": "Number", "inputs": {"value": 2}},
            "sw": {"class_type": "LazySwitch", "inputs": {"switch": switch, "on_true": ["a", 0], "on_false": ["b", 0]}},
            "show": {"class_type": "Show", "inputs": {"value": ["sw", 0]}}}


def test_a_lazy_switch_runs_only_the_branch_it_asks_for(ex):
    first = _run(ex, _switch_prompt(True))
    assert first.outputs["show"] == {"text": ["1"]}
    assert first.executed == ["a", "sw", "show"]
    # the check was asked twice: before (nothing known) and after its input was computed
    assert CALLS == [("check", True, None, None), ("Number", 1), ("check", True, 1, None), ("Show", 1)]
    CALLS.clear()
    other = _run(ex, _switch_prompt(False))
    assert other.outputs["show"] == {"text": ["2"]} and other.executed == ["b", "sw", "show"]
    # "a" is cached now: the check sees its value without asking for it, as in ComfyUI
    assert CALLS[0] == ("check", False, 1, None)
    assert ("Number", 1) not in CALLS


def test_a_lazy_input_not_asked_for_is_none_unless_its_value_is_cached(ex):
    number = {"class_type": "Number", "inputs": {"value": 7}}
    peek = {"a": number, "peek": {"class_type": "LazyPeek", "inputs": {"a": ["a", 0], "tag": "first"}}}
    assert _run(ex, peek).outputs["peek"] == {"text": ["None"]}
    assert CALLS == []  # the Number was never computed
    _run(ex, {"a": number, "show": {"class_type": "Show", "inputs": {"value": ["a", 0]}}})
    assert CALLS == [("Number", 7), ("Show", 7)]
    peek["peek"]["inputs"]["tag"] = "second"
    assert _run(ex, peek).outputs["peek"] == {"text": ["7"]}  # cached now: given without asking


def test_an_expansion_runs_its_graph_and_its_result_is_the_nodes_output(ex):
    events: list = []
    prompt = {"v": {"class_type": "Number", "inputs": {"value": 10}},
              "add": {"class_type": "AddN", "inputs": {"value": ["v", 0], "n": 3}},
              "show": {"class_type": "Show", "inputs": {"value": ["add", 0]}}}
    result = _run(ex, prompt, events)
    assert result.outputs["show"] == {"text": ["13"]}
    # GraphBuilder's ids: parent id, call index, graph index, counter
    assert result.executed == ["v", "add", "add.0.0.1", "add.0.0.2", "add.0.0.3", "show"]
    assert [c for c in CALLS if c[0] == "AddOne"] == [("AddOne", 10), ("AddOne", 11), ("AddOne", 12)]
    executing = [(d["node"], d["display_node"]) for k, d in events if k == "executing" and d["node"]]
    assert executing == [("v", "v"), ("add", "add"), ("add.0.0.1", "add"), ("add.0.0.2", "add"),
                         ("add.0.0.3", "add"), ("show", "show")]
    CALLS.clear()
    again = _run(ex, prompt)
    assert again.executed == [] and again.outputs["show"] == {"text": ["13"]} and CALLS == []
    # more steps: the first three expanded nodes have the same inputs as before -> cached
    CALLS.clear()
    prompt["add"]["inputs"]["n"] = 4
    longer = _run(ex, prompt)
    assert longer.outputs["show"] == {"text": ["14"]}
    assert [c for c in CALLS if c[0] == "AddOne"] == [("AddOne", 13)]
    assert longer.executed == ["add", "add.0.0.4", "show"]


def test_an_expansion_may_link_to_the_workflows_own_nodes(ex):
    prompt = {"v": {"class_type": "Number", "inputs": {"value": 5}},
              "add": {"class_type": "AddNFromLink", "inputs": {"value": ["v", 0], "n": 2}},
              "show": {"class_type": "Show", "inputs": {"value": ["add", 0]}}}
    assert _run(ex, prompt).outputs["show"] == {"text": ["7"]}


def test_a_loop_expands_into_itself_until_done(ex):
    prompt = {"v": {"class_type": "Number", "inputs": {"value": 0}},
              "loop": {"class_type": "CountDown", "inputs": {"value": ["v", 0], "n": 4}},
              "show": {"class_type": "Show", "inputs": {"value": ["loop", 0]}}}
    result = _run(ex, prompt)
    assert result.outputs["show"] == {"text": ["4"]}
    assert [c for c in CALLS if c[0] == "CountDown"] == [("CountDown", 0, 4), ("CountDown", 1, 3),
                                                           ("CountDown", 2, 2), ("CountDown", 3, 1),
                                                           ("CountDown", 4, 0)]
    assert result.executed[:4] == ["v", "loop", "loop.0.0.1", "loop.0.0.2"]
    assert result.executed[4:6] == ["loop.0.0.2.0.0.1", "loop.0.0.2.0.0.2"]
    assert len(result.executed) == 2 + 4 * 2 + 1


def test_a_blocker_with_a_message_is_reported_once_and_the_run_goes_on(ex):
    events: list = []
    prompt = {"v": {"class_type": "Number", "inputs": {"value": 3}},
              "gate": {"class_type": "Gate", "inputs": {"value": ["v", 0], "open": False, "message": "closed"}},
              "one": {"class_type": "AddOne", "inputs": {"value": ["gate", 0]}},
              "show": {"class_type": "Show", "inputs": {"value": ["one", 0]}},
              "show2": {"class_type": "Show", "inputs": {"value": ["gate", 1]}},
              "free": {"class_type": "Show", "inputs": {"value": ["v", 0]}}}
    result = _run(ex, prompt, events)
    assert [c for c in CALLS if c[0] in ("AddOne", "Show")] == [("Show", 3)]  # only "free" ran
    assert result.outputs == {"free": {"text": ["3"]}}
    blocked = [d for k, d in events if k == "execution_blocked"]
    assert len(blocked) == 2  # each node the blocker reached first: "one" and "show2"
    assert {d["node_id"] for d in blocked} == {"one", "show2"}
    assert all(d["exception_message"] == "Execution Blocked: closed" and d["exception_type"] == "ExecutionBlocked"
               for d in blocked)
    assert [w.message for w in result.warnings] == ["Execution Blocked: closed"] * 2
    assert events[-2][0] == "execution_success"
    silent: list = []
    prompt["gate"]["inputs"]["message"] = ""
    quiet = _run(ex, prompt, silent)
    assert not [k for k, _ in silent if k == "execution_blocked"] and quiet.warnings == []


@pytest.mark.parametrize("kind, message", [
    ("duplicate", "added node ids that already exist: n"),
    ("unknown", "Node type 'NoSuchNode' is not registered"),
    ("cycle", "expanded into a graph with a cycle through node"),
    ("dangling", "result links to node 'nowhere', which is neither in its expansion nor in the run"),
    ("bad_input", "Value 5000 bigger than max of 1000"),
])
def test_a_wrong_expansion_fails_at_its_node_with_the_reason(ex, kind, message):
    prompt = {"n": {"class_type": "Number", "inputs": {"value": 1}},
              "bad": {"class_type": "BadExpansion", "inputs": {"kind": kind}},
              "show": {"class_type": "Show", "inputs": {"value": ["bad", 0]}},
              "show_n": {"class_type": "Show", "inputs": {"value": ["n", 0]}}}
    with pytest.raises(NodeExecutionError) as raised:
        _run(ex, prompt)
    assert raised.value.node_id == "bad" and raised.value.class_type == "BadExpansion"
    assert message in raised.value.exception_message
    # the executor stays usable
    assert _run(ex, {"n": prompt["n"], "show_n": prompt["show_n"]}).outputs["show_n"] == {"text": ["1"]}


def test_an_expansion_may_give_a_socket_input_a_value(ex):
    """A prompt must link a socket input of a pack's type; an expansion may put a value it holds
    there, and the added node gets it as it is (as ComfyUI runs it)."""
    result = _run(ex, {"c": {"class_type": "ConstExpansion", "inputs": {"value": 41}},
                       "show": {"class_type": "Show", "inputs": {"value": ["c", 0]}}})
    assert result.outputs["show"] == {"text": ["42"]} and ("Unbox", {"n": 41}) in CALLS
    with pytest.raises(ValidationError, match="not a constant"):  # still refused in a prompt
        _run(ex, {"u": {"class_type": "Unbox", "inputs": {"box": {"n": 41}}},
                  "show": {"class_type": "Show", "inputs": {"value": ["u", 0]}}})


def test_a_node_an_expansion_added_fails_as_the_prompts_node_that_expanded(ex):
    """As ComfyUI (real_node_id): the error names the prompt's node, which a client can show, and
    says which added node raised; expansions of expansions lead back to the first."""
    events: list = []
    prompt = {"bad": {"class_type": "BadExpansion", "inputs": {"kind": "raises"}},
              "show": {"class_type": "Show", "inputs": {"value": ["bad", 0]}}}
    with pytest.raises(NodeExecutionError) as raised:
        _run(ex, prompt, events)
    err = raised.value
    assert (err.node_id, err.class_type, err.expanded_node) == ("bad", "BadExpansion", (err.expanded_node[0], "Boom"))
    assert err.expanded_node[0].endswith("r.2") and err.exception_message == "boom"
    assert f"node 'bad' (BadExpansion) failed in node '{err.expanded_node[0]}' (Boom) it added: " in str(err)
    (error,) = [d for k, d in events if k == "execution_error"]
    assert (error["node_id"], error["node_type"]) == ("bad", "BadExpansion")


def test_asking_for_an_input_that_is_not_connected_is_an_error(ex):
    prompt = {"ask": {"class_type": "AskUnconnected", "inputs": {"value": 4}},
              "show": {"class_type": "Show", "inputs": {"value": ["ask", 0]}}}
    with pytest.raises(NodeExecutionError) as raised:
        _run(ex, prompt)
    assert raised.value.node_id == "ask"
    assert raised.value.exception_message == ("AskUnconnected asked for its input 'extra', but nothing is "
                                              "connected to it")


def test_is_changed_gets_none_for_a_linked_input_and_caches_on_its_answer(ex, caplog):
    prompt = {"v": {"class_type": "Number", "inputs": {"value": 2}},
              "c": {"class_type": "Changed", "inputs": {"value": ["v", 0], "label": "a"}},
              "show": {"class_type": "Show", "inputs": {"value": ["c", 0]}}}
    assert _run(ex, prompt).executed == ["v", "c", "show"]
    assert Changed.SEEN == [(None, "a")]
    assert _run(ex, prompt).executed == []  # same answer: cached
    prompt["c"]["inputs"]["label"] = "raise"
    with caplog.at_level(logging.WARNING, logger="latentgraph.plugins"):
        runs = [_run(ex, prompt).executed for _ in range(2)]
    assert runs == [["c", "show"], ["c", "show"]]  # IS_CHANGED failed: it runs every time
    assert "Changed: IS_CHANGED raised RuntimeError: cannot tell; the node runs every time" in caplog.text


def test_graph_builder_and_helpers_outside_a_run():
    graph = GraphBuilder(prefix="p.")
    a = graph.node("Number", value=1)
    b = graph.node("AddOne", value=a.out(0))
    assert graph.node("Number", id="1") is a  # the same id gives the node made first
    assert graph.lookup_node("2") is b
    graph.replace_node_output("1", 0, 5)
    assert graph.finalize() == {"p.1": {"class_type": "Number", "inputs": {"value": 1}},
                                "p.2": {"class_type": "AddOne", "inputs": {"value": 5}}}
    b.set_override_display_id("9")
    assert graph.finalize()["p.2"]["override_display_id"] == "9"
    graph.remove_node("1")
    assert list(graph.finalize()) == ["p.2"]
    assert is_link(["3", 0]) and is_link(["3", 1.0]) and not is_link([3, 0]) and not is_link(["3", True])
    assert add_graph_prefix({"1": {"class_type": "X", "inputs": {"a": ["2", 0], "b": 3}}}, (["1", 0], 4), "q.") == (
        {"q.1": {"class_type": "X", "inputs": {"a": ["q.2", 0], "b": 3}}}, (["q.1", 0], 4))
