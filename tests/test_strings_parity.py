"""The string nodes against ComfyUI 0.3.64, exactly: a table of cases
(tests/fixtures/comfy_reference/leftovers16/strings.json, made by make_prompt_strings.py) run by
the oracle, each output's Python type and value recorded in strings_ref.json."""

from __future__ import annotations

import json

import pytest

from latentgraph.graph import Environment, Executor
from latentgraph.nodes import create_registry
from conftest import FIXTURES

HERE = FIXTURES / "comfy_reference" / "leftovers16"
PROMPT = json.loads((HERE / "strings.json").read_text(encoding="utf-8"))
REF = json.loads((HERE / "strings_ref.json").read_text(encoding="utf-8"))["results"]
CASES = sorted(nid for nid, n in PROMPT.items() if n["class_type"] != "SaveValueJSON")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("strings")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp", models_dir=root / "m",
                      device="cpu")
    prompt = {nid: PROMPT[nid] for nid in CASES}  # the oracle's sinks left out
    run = Executor(create_registry(), env).run(prompt, targets=CASES)
    return {nid: run.get(nid) for nid in CASES}


def test_the_table_covers_every_string_node():
    assert len(CASES) == len(REF) == 53
    nodes = {PROMPT[c]["class_type"] for c in CASES}
    assert nodes == {"StringConcatenate", "StringSubstring", "StringLength", "CaseConverter", "StringTrim",
                     "StringReplace", "StringContains", "StringCompare", "RegexMatch", "RegexExtract", "RegexReplace"}


@pytest.mark.parametrize("case", CASES)
def test_matches_comfyui_exactly(outputs, case):
    got, want = outputs[case], REF[case]
    assert type(got).__name__ == want["type"]
    assert got == want["value"]


def test_some_values_spelled_out():
    """A few of ComfyUI's answers that a plausible implementation could get wrong."""
    assert REF["case_title"]["value"] == "Hello World It'S Élan-Vital 3Rd"  # str.title
    assert REF["contains_sz"]["value"] is False  # lower(), not casefold()
    assert REF["case_upper_sz"]["value"] == "STRASSE"
    assert REF["extract_bad"]["value"] == "" and REF["match_bad"]["value"] is False
    assert REF["trim_left"]["value"] == "x y \n\u00a0"
    assert REF["replace_empty_find"]["value"] == "-a-b-c-"
