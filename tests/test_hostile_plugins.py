"""The ComfyUI V1 adapter under hostile and odd packs (issue 14, section 5): the ui of a node
run once per list item, what VALIDATE_INPUTS is given (linked inputs as None, hidden inputs,
input_types) and how its failures are reported (one custom_validation_failed entry per input,
as ComfyUI's execution.py writes them). Fixture pack: tests/fixtures/plugins/hostile."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentgraph.graph import Environment, Executor, NodeExecutionError, ValidationError, Workflow
from latentgraph.graph.executor import ui_files
from latentgraph.graph.validate import validate
from latentgraph.nodes import create_registry
from latentgraph.plugins import load_plugins

HOSTILE = Path(__file__).parent / "fixtures" / "plugins" / "hostile"


@pytest.fixture(scope="module")
def registry():
    registry = create_registry()
    infos = load_plugins(registry, [HOSTILE], entry_points=False)
    assert [(i.name, i.status) for i in infos] == [("savers", "loaded"), ("v1_semantics", "loaded")]
    return registry


@pytest.fixture
def env(tmp_path):
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir()
    return Environment(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                       models_dir=tmp_path / "models", device="cpu")


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def failed(registry, env, wf, targets=None) -> dict:
    """The node_errors of a workflow that must fail validation."""
    with pytest.raises(ValidationError) as raised:
        validate(wf, registry, env, targets)
    return raised.value.report.node_errors


def custom(name: str | None, details: str) -> dict:
    return {"type": "custom_validation_failed", "message": "Custom validation failed for node",
            "details": details, "extra_info": {"input_name": name}}


# -- ui of per-item runs -----------------------------------------------------------------------
def test_per_item_ui_is_concatenated_whatever_the_sequence(registry, env, tmp_path):
    ex = Executor(registry, env)
    wf = Workflow()
    wf.add("show", "TupleUI", value=wf.add("items", "Items", count=4))
    events = []
    result = ex.run(wf, listener=lambda kind, data: events.append((kind, data)))
    expected = {"value": [1, 2, 3, 4], "pair": [1, 10, 2, 20, 3, 30, 4, 40], "text": ["v=1", "v=2", "v=3", "v=4"],
                "even": [2, 4]}
    assert result.outputs["show"] == expected
    assert result.executed.count("show") == 1 and result.values["show"] == ([100, 200, 300, 400],)
    executed = [d for k, d in events if k == "executed"]
    assert len(executed) == 1 and executed[0]["node"] == "show" and executed[0]["output"] == expected
    again = ex.run(wf)  # from the cache: the same merged ui, nothing run
    assert again.executed == [] and again.outputs["show"] == expected
    assert tree(tmp_path) == ["input", "output", "temp"]


def test_one_call_gives_lists_too(registry, env):
    wf = Workflow()
    wf.add("show", "TupleUI", value=wf.add("items", "Items", count=1))
    assert Executor(registry, env).run(wf).outputs["show"] == {"value": [1], "pair": [1, 10], "text": ["v=1"]}
    wf.nodes["items"].inputs["count"] = 0  # an empty list: the node never runs, so it shows nothing
    result = Executor(registry, env).run(wf)
    assert result.outputs == {} and result.executed == ["items", "show"]


def test_files_named_in_tuples_are_found(registry, env):
    wf = Workflow()
    wf.add("save", "SaveTuple", value=wf.add("items", "Items", count=3))
    outputs = Executor(registry, env).run(wf).outputs
    assert [f["filename"] for f in ui_files(outputs["save"])] == ["item_1.png", "item_2.png", "item_3.png"]
    from latentgraph.batch import written_files

    assert written_files(outputs) == ["output:item_1.png", "output:item_2.png", "output:item_3.png"]


def test_a_ui_that_is_not_a_dict_names_the_node(registry, env):
    wf = Workflow()
    wf.add("bad", "ListUI", value=2)
    with pytest.raises(NodeExecutionError) as raised:
        Executor(registry, env).run(wf)
    assert raised.value.node_id == "bad" and raised.value.exception_type == "TypeError"
    assert raised.value.exception_message == ("ListUI returned a ui of type list; it must be a dict of lists "
                                              "such as {'images': [...]}")


# -- VALIDATE_INPUTS ---------------------------------------------------------------------------
def test_kwargs_hook_is_called_with_linked_inputs_as_none(registry, env, tmp_path):
    wf = Workflow()
    wf.add("k", "KwargsCheck", text=wf.add("p", "PrimitiveString", value="ok"), steps=3)
    errors = failed(registry, env, wf)
    given = "given auth=None, steps=3, text=None, unique_id='k'"
    assert errors["k"]["errors"] == [custom(n, f"{n} - {given}") for n in ("text", "steps", "unique_id", "auth")]
    assert errors["k"]["class_type"] == "KwargsCheck" and list(errors) == ["k"]
    # a linked socket input is given too (as None), an absent optional one is not
    wf.add("img", "EmptyImage", width=8, height=8)
    wf.nodes["k"].inputs.update(text="bad", image=["img", 0])
    given = "given auth=None, image=None, steps=3, text='bad', unique_id='k'"
    assert failed(registry, env, wf)["k"]["errors"] == [
        custom(n, f"{n} - {given}") for n in ("text", "steps", "image", "unique_id", "auth")]
    assert tree(tmp_path / "output") == [] and tree(tmp_path / "temp") == []


def test_kwargs_hook_owns_every_input_check(registry, env):
    """As ComfyUI: a hook with **kwargs switches off the range checks of every input."""
    wf = Workflow()
    wf.add("k", "KwargsCheck", text="ok", steps=50)  # max is 10
    assert Executor(registry, env).run(wf).outputs["k"] == {"text": ["okx50"]}


def test_named_hook_gets_none_for_a_linked_input(registry, env):
    wf = Workflow()
    wf.add("n", "NamedCheck", a=wf.add("i", "PrimitiveInt", value=7), b="x")
    plan = validate(wf, registry, env, ["n"])  # called (a=None), passes; the value 7 is not checked
    assert plan.nodes["n"].links == {"a": ("i", 0)}
    assert Executor(registry, env).run(wf, targets=["n"]).get("n") == 7
    wf.nodes["n"].inputs["b"] = "y"
    given = "given a=None, b='y', unique_id='n'"
    assert failed(registry, env, wf, ["n"])["n"]["errors"] == [custom(n, f"{n} - {given}") for n in ("a", "b", "unique_id")]


def test_a_string_is_reported_once_per_input(registry, env):
    wf = Workflow()
    wf.add("n", "NamedCheck", a=7, b="x")
    errors = failed(registry, env, wf, ["n"])["n"]["errors"]
    assert errors == [custom(n, f"{n} - a=7 is too big") for n in ("a", "b", "unique_id")]


def test_false_and_none_fail_as_in_comfyui(registry, env):
    wf = Workflow()
    wf.add("f", "FalseCheck", mode="false", level=3)
    errors = failed(registry, env, wf, ["f"])
    assert errors["f"]["errors"] == [custom("mode", "mode"), custom("level", "level")]
    with pytest.raises(ValidationError) as raised:
        validate(wf, registry, env, ["f"])
    assert "node 'f' (FalseCheck):\n    - input 'mode': Custom validation failed for node (mode)\n" \
           "    - input 'level': Custom validation failed for node (level)" in raised.value.format()
    wf.nodes["f"].inputs["mode"] = "none"  # a hook that forgot to return
    assert failed(registry, env, wf, ["f"])["f"]["errors"] == [custom("mode", "mode - None"),
                                                               custom("level", "level - None")]
    wf.nodes["f"].inputs["mode"] = "true"
    assert validate(wf, registry, env, ["f"]).nodes["f"].consts == {"mode": "true", "level": 3}


def test_a_hook_that_raises_is_one_error_and_owns_its_combo(registry, env):
    wf = Workflow()
    wf.add("f", "FalseCheck", mode="bogus", level=0)  # not in the combo: the hook owns mode, and raises
    errors = failed(registry, env, wf, ["f"])["f"]["errors"]
    assert errors == [{"type": "exception_during_validation", "message": "Exception when validating node",
                       "details": "'bogus'", "extra_info": {"exception_type": "KeyError"}}]


def test_input_types_are_given_and_the_hook_owns_type_checks(registry, env):
    wf = Workflow()
    wf.add("t", "TypesCheck", image=wf.add("m", "MakeMask", size=4)[0], strength=0.5)  # MASK into IMAGE
    plan = validate(wf, registry, env, ["t"])
    assert plan.nodes["t"].links == {"image": ("m", 0)}
    wf.nodes["t"].inputs["image"] = ["m", 1]  # a LATENT: the hook refuses it
    # one entry per input the hook takes: strength (input_types is no input; ComfyUI lists it too)
    assert failed(registry, env, wf, ["t"])["t"]["errors"] == [
        custom("strength", "strength - image must be IMAGE or MASK, got LATENT")]
    wf.add("e", "EmptyImage", width=8, height=8)
    wf.nodes["t"].inputs["image"] = ["e", 0]
    assert validate(wf, registry, env, ["t"]).nodes["t"].links == {"image": ("e", 0)}


def test_a_hook_given_nothing_is_still_reported(registry, env, tmp_path):
    """ComfyUI loops over the inputs it gave the hook to report a failure, so a hook given none
    fails silently there; here the failure is one entry without an input name."""
    wf = Workflow()
    wf.add("z", "NoArgsCheck", value=1)
    errors = failed(registry, env, wf, ["z"])["z"]["errors"]
    assert errors == [custom(None, "this node is switched off")]
    assert tree(tmp_path / "output") == []
