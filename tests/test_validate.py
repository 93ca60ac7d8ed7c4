"""Validation reports every problem at once, in ComfyUI's node_errors shape, before
anything runs; it checks only what the outputs need."""

from __future__ import annotations

import math
from typing import Annotated

import pytest

from latentgraph.graph import Int, Link, ValidationError, Workflow, node, validate


def errors_of(excinfo) -> dict:
    return excinfo.value.report.node_errors


def types_at(node_errors: dict, node_id: str) -> list[str]:
    return [e["type"] for e in node_errors[node_id]["errors"]]


def check(wf, toy, env=None, **kw):
    registry, _ = toy
    with pytest.raises(ValidationError) as info:
        validate(wf, registry, env, **kw)
    return info


def test_valid_workflow_gives_a_plan_in_topological_order(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("show", "Show", value=Link("sum", 0))
    wf.add("sum", "Add", a=Link("a", 0), b=Link("b", 0))
    wf.add("a", "Number", value=1)
    wf.add("b", "Number", value="2")  # coerced as ComfyUI does
    plan = validate(wf, registry)
    order = list(plan.nodes)
    assert order.index("a") < order.index("sum") < order.index("show")
    assert plan.targets == ["show"]
    assert plan.nodes["b"].consts == {"value": 2}
    assert plan.nodes["sum"].links == {"a": ("a", 0), "b": ("b", 0)}
    assert sorted(plan.graph.edges) == [("a", "sum"), ("b", "sum"), ("sum", "show")]


def test_every_problem_is_reported_at_once(toy):
    wf = Workflow()
    wf.add("n1", "Number", value=5000)          # value_bigger_than_max
    wf.add("n2", "Number", value=-5000)         # value_smaller_than_min
    wf.add("n3", "Number", value="seven")       # invalid_input_type
    wf.add("cat", "Concat", a="x", b="y", sep="+")  # value_not_in_list
    wf.add("add", "Add", a=Link("n1", 0))       # required_input_missing (b)
    wf.add("sc", "Scale", x=Link("cat", 0))     # return_type_mismatch (STRING -> INT)
    wf.add("sc2", "Scale", x=["n2", 0, 1])      # bad_linked_input
    wf.add("sc3", "Scale", x=Link("ghost", 0))  # missing_linked_node
    wf.add("sc4", "Scale", x=Link("n3", 5))     # missing_linked_output
    wf.add("mystery", "Frobnicate", x=1)        # missing_node_type
    for i, src in enumerate(["add", "sc", "sc2", "sc3", "sc4", "n2"]):
        wf.add(f"show{i}", "Show", value=Link(src, 0))
    info = check(wf, toy)
    errs = errors_of(info)
    assert types_at(errs, "n1") == ["value_bigger_than_max"]
    assert types_at(errs, "n2") == ["value_smaller_than_min"]
    assert types_at(errs, "n3") == ["invalid_input_type"]
    assert types_at(errs, "cat") == ["value_not_in_list"]
    assert types_at(errs, "add") == ["required_input_missing"]
    assert types_at(errs, "sc") == ["return_type_mismatch"]
    assert types_at(errs, "sc2") == ["bad_linked_input"]
    assert types_at(errs, "sc3") == ["missing_linked_node"]
    assert types_at(errs, "sc4") == ["missing_linked_output"]
    assert types_at(errs, "mystery") == ["missing_node_type"]
    assert len(errs) == 10
    report = info.value.report
    assert report.error["type"] == "prompt_outputs_failed_validation"
    assert report.count() == 10
    # ComfyUI's fields
    e = errs["n1"]["errors"][0]
    assert e["message"] == "Value 5000 bigger than max of 1000" and e["details"] == "value"
    assert e["extra_info"]["input_name"] == "value" and e["extra_info"]["received_value"] == 5000
    e = errs["add"]["errors"][0]
    assert e["message"] == "Required input is missing" and e["extra_info"] == {"input_name": "b"}
    e = errs["sc"]["errors"][0]
    assert e["extra_info"]["received_type"] == "STRING" and e["extra_info"]["linked_node"] == ["cat", 0]
    assert errs["cat"]["errors"][0]["details"] == "sep: '+' not in [' ', '-', '']"
    assert errs["mystery"]["class_type"] == "Frobnicate"
    # dependent outputs: every output downstream, through wrong links too (not through
    # sc2's malformed one, which is no link at all)
    assert errs["n2"]["dependent_outputs"] == ["show5"]
    assert errs["n3"]["dependent_outputs"] == ["show4"]
    assert errs["n1"]["dependent_outputs"] == ["show0"]


def test_readable_block_lists_every_problem(toy):
    wf = Workflow(source="flow.yaml")
    wf.add("n", "Number", value=5000)
    wf.add("add", "Add", a=Link("n", 0))
    wf.add("show", "Show", value=Link("add", 0))
    text = check(wf, toy).value.format()
    assert text.splitlines()[0] == "flow.yaml: invalid workflow, 2 problems:"
    assert "  node 'n' (Number):" in text
    assert "    - input 'value': Value 5000 bigger than max of 1000" in text
    assert "    - input 'b': Required input is missing" in text


def test_unknown_type_suggests_a_close_name(toy):
    wf = Workflow()
    wf.add("n", "Numbr", value=1)
    wf.add("show", "Show", value=Link("n", 0))
    msg = errors_of(check(wf, toy))["n"]["errors"][0]["message"]
    assert "did you mean 'Number'?" in msg


def test_no_outputs(toy):
    wf = Workflow()
    wf.add("n", "Number", value=1)
    info = check(wf, toy)
    assert info.value.report.error["type"] == "prompt_no_outputs"
    assert info.value.report.node_errors == {}


def test_cycles_are_reported_with_their_path(toy):
    wf = Workflow()
    wf.add("a", "Add", a=Link("c", 0), b=Link("n", 0))
    wf.add("b", "Scale", x=Link("a", 0))
    wf.add("c", "Scale", x=Link("b", 0))
    wf.add("n", "Number", value=1)
    wf.add("show", "Show", value=Link("c", 0))
    errs = errors_of(check(wf, toy))
    assert set(errs) == {"a", "b", "c"}
    err = errs["a"]["errors"][0]
    assert err["type"] == "dependency_cycle"
    assert sorted(err["extra_info"]["cycle_nodes"]) == ["a", "b", "c"]
    assert "(Add)" in err["message"] and "->" in err["message"]
    self_loop = Workflow()
    self_loop.add("s", "Scale", x=Link("s", 0))
    self_loop.add("show", "Show", value=Link("s", 0))
    assert types_at(errors_of(check(self_loop, toy)), "s") == ["dependency_cycle"]


def test_only_what_outputs_need_is_validated(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("n", "Number", value=1)
    wf.add("show", "Show", value=Link("n", 0))
    wf.add("orphan", "Number", value=99999)  # invalid but nothing needs it
    plan = validate(wf, registry)
    assert list(plan.nodes) == ["n", "show"]


def test_coercion_follows_comfyui(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("i", "Number", value="7")
    wf.add("f", "Ratio", x="2.5", invert="true")
    wf.add("t", "Number", value=7.9)
    wf.add("s", "Concat", a=12, b=3.5)
    for n in ("i", "f", "t", "s"):
        wf.add(f"show_{n}", "Show", value=Link(n, 0))
    plan = validate(wf, registry)
    assert plan.nodes["i"].consts["value"] == 7
    assert plan.nodes["f"].consts == {"x": 2.5, "invert": True}
    assert plan.nodes["t"].consts["value"] == 7  # int() truncates, as in ComfyUI
    assert plan.nodes["s"].consts == {"a": "12", "b": "3.5", "sep": " "}  # sep from its default


@pytest.mark.parametrize("value,kind", [
    (float("nan"), "invalid_input_type"),
    (float("inf"), "invalid_input_type"),
    (10**30, "value_bigger_than_max"),
    ("maybe", "invalid_input_type"),
    ([1, 2, 3], "bad_linked_input"),
])
def test_bad_constants(toy, value, kind):
    wf = Workflow()
    wf.add("f", "Ratio", x=1.0, invert=False)
    wf.add("n", "Number", value=1)
    target, name = ("f", "invert") if value == "maybe" else ("f", "x")
    if value == 10**30:
        target, name = "n", "value"
    wf.set(f"{target}.{name}", value)
    wf.add("s1", "Show", value=Link("f", 0))
    wf.add("s2", "Show", value=Link("n", 0))
    errs = errors_of(check(wf, toy))
    assert types_at(errs, target) == [kind]
    assert errs[target]["errors"][0]["extra_info"]["input_name"] == name
    if isinstance(value, float) and math.isnan(value):
        assert "not a finite number" in errs[target]["errors"][0]["details"]


def test_huge_integer_without_declared_bounds(toy):
    registry, _ = toy

    @node(outputs=["INT"])
    def Unbounded(v: Annotated[int, Int(0)]) -> int:
        return v

    registry.register(Unbounded)
    wf = Workflow()
    wf.add("u", "Unbounded", v=2**80)
    wf.add("show", "Show", value=Link("u", 0))
    err = errors_of(check(wf, toy))["u"]["errors"][0]
    assert err["type"] == "value_bigger_than_max" and err["message"].endswith(str(2**64 - 1))


def test_socket_input_with_a_constant_is_an_error(toy):
    wf = Workflow()
    wf.add("sc", "Scale", x=5)
    wf.add("show", "Show", value=Link("sc", 0))
    err = errors_of(check(wf, toy))["sc"]["errors"][0]
    assert err["type"] == "invalid_input_type" and "takes a link from a INT output" in err["message"]


def test_friendly_links_in_socket_inputs(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("cat", "Concat", a="ab", b="c")
    wf.add("n", "Number", value=2)
    wf.add("sc", "Scale", x="cat.length", factor=2)  # by output name
    wf.add("sc2", "Scale", x="n", factor=2)           # bare id: the only output
    wf.add("sc3", "Scale", x="cat.1", factor=2)       # by index
    wf.add("show", "Show", value="sc")
    wf.add("show2", "Show", value="sc2")
    wf.add("show3", "Show", value="sc3")
    wf.add("show4", "Show", value="cat")  # two outputs: must name one
    wf.add("show5", "Show", value="cat.nope")
    wf.add("show6", "Show", value="gone.text")
    info = check(wf, toy)
    errs = errors_of(info)
    assert set(errs) == {"show4", "show5", "show6"}
    assert "has 2 outputs (text, length)" in errs["show4"]["errors"][0]["message"]
    assert "has no output 'nope' (outputs: 0:text, 1:length)" in errs["show5"]["errors"][0]["message"]
    assert errs["show6"]["errors"][0]["type"] == "missing_linked_node"
    for bad in ("show4", "show5", "show6"):
        wf.remove(bad)
    plan = validate(wf, registry)
    assert plan.nodes["sc"].links == {"x": ("cat", 1)}
    assert plan.nodes["sc2"].links == {"x": ("n", 0)}
    assert plan.nodes["sc3"].links == {"x": ("cat", 1)}


def test_widget_inputs_can_be_linked_but_strings_stay_values(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("n", "Number", value=3)
    wf.add("sc", "Scale", x="n", factor=Link("n", 0))  # an INT output into an INT widget
    wf.add("cat", "Concat", a="n", b="n.0")            # strings in STRING widgets are values
    wf.add("show", "Show", value="sc")
    wf.add("show2", "Show", value="cat.text")
    plan = validate(wf, registry)
    assert plan.nodes["sc"].links == {"x": ("n", 0), "factor": ("n", 0)}
    assert plan.nodes["cat"].consts["a"] == "n" and plan.nodes["cat"].consts["b"] == "n.0"


def test_custom_validate_hook_and_unknown_input_warning(toy, env):
    registry, _ = toy
    wf = Workflow()
    wf.add("r", "ReadText", path="missing.txt", colour="red")
    wf.add("show", "Show", value="r")
    errs = errors_of(check(wf, toy, env))
    err = errs["r"]["errors"][0]
    assert err["type"] == "custom_validation_failed" and "no file missing.txt" in err["details"]
    (env.input_dir / "missing.txt").write_text("here now")
    plan = validate(wf, registry, env)
    assert [(w.node, w.input) for w in plan.warnings] == [("r", "colour")]


def test_partial_runs_the_valid_outputs_like_comfyui(toy):
    registry, _ = toy
    wf = Workflow()
    wf.add("good", "Number", value=1)
    wf.add("bad", "Number", value=99999)
    wf.add("show_good", "Show", value="good")
    wf.add("show_bad", "Show", value="bad")
    check(wf, toy)
    plan = validate(wf, registry, partial=True)
    assert plan.targets == ["show_good"] and list(plan.nodes) == ["good", "show_good"]


def test_comfy_shape_of_the_report(toy):
    wf = Workflow()
    wf.add("n", "Number", value=5000)
    wf.add("show", "Show", value="n")
    body = check(wf, toy).value.report.as_comfy()
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == {"type", "message", "details", "extra_info"}
    assert set(body["node_errors"]["n"]) == {"errors", "dependent_outputs", "class_type"}
    assert body["node_errors"]["n"]["dependent_outputs"] == ["show"]
