"""Bad input: a clear error naming the file, node, input (and line), never a traceback."""

from __future__ import annotations

import pytest

from latentgraph.graph import Workflow, WorkflowError


def load_error(tmp_path, text: str | bytes, name: str = "flow.yaml") -> WorkflowError:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(WorkflowError) as info:
        Workflow.load(path)
    assert str(path) in str(info.value)
    return info.value


def test_malformed_yaml_names_the_line(tmp_path):
    err = load_error(tmp_path, "nodes:\n  a: {type: Number, value: 1\n  b: {type: Show}\n")
    assert "invalid YAML" in str(err) and err.problems[0].line is not None


def test_malformed_json_names_line_and_column(tmp_path):
    err = load_error(tmp_path, '{"1": {"class_type": "Number",\n "inputs": {"value": 1,}}}', "flow.json")
    assert "invalid JSON" in str(err) and err.problems[0].line == 2


def test_duplicate_yaml_keys_are_refused(tmp_path):
    err = load_error(tmp_path, "nodes:\n  a: {type: Number, value: 1}\n  a: {type: Number, value: 2}\n")
    assert "duplicate key 'a'" in str(err) and err.problems[0].line == 3


@pytest.mark.parametrize("text,expected", [
    ("- just\n- a list\n", "got a list"),
    ("42\n", "got a integer"),
    ("nodes: [1, 2]\n", "'nodes' must be a mapping"),
    ("nodes: {}\n", "'nodes' is empty"),
    ("", "the file is empty"),
    ("{}", "the workflow has no nodes"),
    ("nodes:\n  a: 3\n", "node 'a': expected a mapping with a 'type' key"),
    ("nodes:\n  a: {value: 3}\n", "node 'a': missing 'type'"),
    ("nodes:\n  a: {type: Number}\nextra: 1\n", "unknown top-level keys ['extra']"),
    ("nodes:\n  a: {type: Number, inputs: 5}\n", "'inputs' must be a mapping"),
    ("nodes:\n  yes: {type: Number}\n", "node id True must be a string"),
    ('{"1": {"inputs": {}}}', "node '1': missing 'class_type'"),
    ('{"1": {"class_type": "X", "inputs": [1]}}', "node '1': 'inputs' must be an object"),
    ('{"1": 5}', "node '1': expected an object with class_type and inputs, got integer"),
    ('{"nodes": [], "links": []}', "UI-format workflow"),
])
def test_wrong_structure(tmp_path, text, expected):
    err = load_error(tmp_path, text, "flow.json" if text.startswith("{") else "flow.yaml")
    assert expected in str(err)


def test_every_structural_problem_is_listed(tmp_path):
    err = load_error(tmp_path, "nodes:\n  a: {value: 1}\n  b: 7\n  c: {type: Number}\n")
    assert len(err.problems) == 2
    assert {p.node for p in err.problems} == {"a", "b"}
    assert [p.line for p in err.problems] == [2, 3]


def test_unreadable_files(tmp_path):
    with pytest.raises(WorkflowError, match="file not found"):
        Workflow.load(tmp_path / "nope.yaml")
    with pytest.raises(WorkflowError, match="is a directory"):
        Workflow.load(tmp_path)
    err = load_error(tmp_path, b"\xff\xfe\x00garbage\x80", "flow.yaml")
    assert "not a text file" in str(err)
    err = load_error(tmp_path, b"\x89PNG\r\n\x1a\nnot really", "x.png")
    assert "cannot read the PNG" in str(err)


def test_huge_integer_literal_in_json(tmp_path):
    err = load_error(tmp_path, '{"1": {"class_type": "Number", "inputs": {"value": ' + "9" * 5000 + "}}}",
                     "flow.json")
    assert "invalid JSON" in str(err)


def test_bad_link_forms_in_yaml(tmp_path):
    err = load_error(tmp_path, "nodes:\n  a: {type: Show, value: {from: [1], output: 0}}\n")
    assert "node 'a', input 'value'" in str(err) and "{from: NODE, output: NAME_OR_INDEX}" in str(err)
