"""CLI pieces tested in-process: progress bars, interrupt exit code, --set parsing."""

from __future__ import annotations

import io
import sys

import pytest

from latentgraph import cli
from latentgraph.graph import Workflow, WorkflowError
from latentgraph.nodes import create_registry


def test_progress_bars_follow_progress_events(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    wf = Workflow()
    wf.add("k", "EmptyImage")
    bars = cli._ProgressBars(wf)
    bars("executing", {"node": "k"})
    for i in range(1, 5):
        bars("progress", {"value": i, "max": 4, "node": "k", "prompt_id": "p"})
    assert bars.bar is not None and bars.bar.n == 4 and bars.bar.total == 4
    bars("execution_success", {"prompt_id": "p"})
    assert bars.bar is None
    assert "k (EmptyImage)" in err.getvalue() and "4/4" in err.getvalue()


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli._COMMANDS, "nodes", boom)
    assert cli.main(["nodes"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_unexpected_errors_are_reported_plainly(monkeypatch, capsys):
    def bug(args):
        raise ZeroDivisionError("oops")

    monkeypatch.setitem(cli._COMMANDS, "nodes", bug)
    assert cli.main(["nodes"]) == 1
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: oops (run with --debug" in err and "Traceback" not in err
    assert cli.main(["--debug", "nodes"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_set_values_are_yaml_except_for_text_and_choices():
    reg = create_registry()
    wf = Workflow()
    wf.add("img", "EmptyImage")
    wf.add("save", "SaveImage", images="img")
    wf.add("scale", "ImageScale", image="img")
    cli.apply_sets(wf, ["img.color=0xff00ff", "img.width=64", "save.filename_prefix=007",
                        "scale.upscale_method=area", "img.batch_size=2: 3"], reg)
    assert wf.get("img.color") == 0xFF00FF and wf.get("img.width") == 64
    assert wf.get("save.filename_prefix") == "007" and wf.get("scale.upscale_method") == "area"
    assert wf.get("img.batch_size") == {2: 3}  # YAML, so validation will say it is no integer
    with pytest.raises(WorkflowError) as info:
        cli.apply_sets(wf, ["img.nope=1", "ghost.x=1"], reg)
    assert len(info.value.problems) == 2
