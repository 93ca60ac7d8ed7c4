"""The CLI through a subprocess, as a user runs it: exit codes, output, --json, --repeat,
--set, validate, convert, nodes, and readable errors with nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ROOT / "workflows" / "shapes.yaml"

SMALL = """\
nodes:
  bg: {type: EmptyImage, width: 32, height: 24, color: 0x336699}
  inv: {type: ImageInvert, image: bg}
  save: {type: SaveImage, images: inv, filename_prefix: small}
"""


def cli(*args, cwd: Path, check_rc: int | None = 0):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "latentgraph", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if check_rc is not None:
        assert proc.returncode == check_rc, (proc.returncode, proc.stdout, proc.stderr)
    return proc


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "small.yaml").write_text(SMALL)
    return tmp_path


def test_run_writes_the_image_and_says_where(work):
    proc = cli("run", "small.yaml", cwd=work)
    assert "wrote output/small_00001_.png" in proc.stdout
    assert "3 nodes executed, 0 cached" in proc.stdout
    img = Image.open(work / "output" / "small_00001_.png")
    assert img.size == (32, 24)
    # ComfyUI's conversion truncates 255 * x (float32), so 1 - 0x99/255 gives 101, not 102
    expected = tuple(int(np.float32(255.0) * (np.float32(1.0) - np.float32(c) / np.float32(255.0)))
                     for c in (0x33, 0x66, 0x99))
    assert img.getpixel((0, 0)) == expected == (204, 153, 101)
    # the PNG carries the prompt and can be run again as a workflow
    prompt = json.loads(img.text["prompt"])
    assert prompt["inv"]["inputs"]["image"] == ["bg", 0]
    proc = cli("run", "output/small_00001_.png", "--output-dir", "again", cwd=work)
    assert (work / "again" / "small_00001_.png").is_file()


def test_json_and_repeat_show_the_cache(work):
    proc = cli("run", "small.yaml", "--json", "--repeat", "3", cwd=work)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3
    runs = [json.loads(line) for line in lines]
    for run in runs:
        assert set(run) == {"prompt_id", "outputs", "executed", "cached", "timings"}
    assert sorted(runs[0]["executed"]) == ["bg", "inv", "save"] and runs[0]["cached"] == []
    assert set(runs[0]["timings"]) == {"bg", "inv", "save"}
    for run in runs[1:]:
        assert run["executed"] == [] and sorted(run["cached"]) == ["bg", "inv", "save"] and run["timings"] == {}
    assert runs[0]["outputs"]["save"]["images"] == [{"filename": "small_00001_.png", "subfolder": "",
                                                    "type": "output"}]
    assert len({r["prompt_id"] for r in runs}) == 3
    assert sorted(p.name for p in (work / "output").iterdir()) == ["small_00001_.png"]


def test_set_overrides_and_changes_what_runs(work):
    proc = cli("run", "small.yaml", "--set", "bg.color=0", "--set", "save.filename_prefix=sub/dark", "--json",
               cwd=work)
    run = json.loads(proc.stdout)
    assert run["outputs"]["save"]["images"][0] == {"filename": "dark_00001_.png", "subfolder": "sub",
                                                   "type": "output"}
    assert Image.open(work / "output" / "sub" / "dark_00001_.png").getpixel((0, 0)) == (255, 255, 255)


def test_bad_set_is_reported_before_running(work):
    proc = cli("run", "small.yaml", "--set", "bg.colour=1", "--set", "nope.x=1", "--set", "broken", cwd=work,
               check_rc=1)
    err = proc.stderr
    assert "EmptyImage has no input 'colour'" in err and "node 'nope'" in err and "expected NODE.INPUT=VALUE" in err
    assert "Traceback" not in err and not (work / "output").exists()


def test_invalid_workflow_lists_every_problem_and_writes_nothing(work):
    (work / "bad.yaml").write_text(SMALL.replace("width: 32", "width: 0").replace("images: inv", "images: inv.MASK"))
    proc = cli("run", "bad.yaml", cwd=work, check_rc=1)
    err = proc.stderr
    assert err.startswith("bad.yaml: invalid workflow, 2 problems:")
    assert "node 'bg' (EmptyImage):" in err and "Value 0 smaller than min of 1" in err
    assert "node 'save' (SaveImage):" in err and "has no output 'MASK' (outputs: 0:IMAGE)" in err
    assert "Traceback" not in err and proc.stdout == ""
    assert not (work / "output").exists()
    proc = cli("validate", "bad.yaml", "--json", cwd=work, check_rc=1)
    body = json.loads(proc.stdout)
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert sorted(body["node_errors"]) == ["bg", "save"]


def test_failed_node_is_one_readable_block(work):
    (work / "input").mkdir()
    (work / "input" / "broken.png").write_bytes(b"this is not a png")
    (work / "load.yaml").write_text(
        "nodes:\n  load: {type: LoadImage, image: broken.png}\n  save: {type: SaveImage, images: load.IMAGE}\n")
    proc = cli("run", "load.yaml", cwd=work, check_rc=1)
    assert "node 'load' (LoadImage) failed: ValueError: cannot read image 'broken.png'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("run", "load.yaml", "--debug", cwd=work, check_rc=1)
    assert "Traceback (most recent call last)" in proc.stderr
    assert not (work / "output").exists()


@pytest.mark.parametrize("content,expected", [
    ("nodes: [\n", "invalid YAML"),
    ('{"1": {"class_type": "EmptyImage", "inputs": {"width": NaN}}, "2": {"class_type": "SaveImage", '
     '"inputs": {"images": ["1", 0]}}}', "Failed to convert an input value to a INT value"),
    ('{"1": {"class_type": "EmptyImage", "inputs": {"width": 123456789012345678901234567890}}, '
     '"2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}}', "bigger than max of 16384"),
    ("nodes:\n  x: {type: Sampler9000}\n", "Node type 'Sampler9000' is not registered"),
])
def test_bad_files_exit_1_without_traceback(work, content, expected):
    name = "bad.json" if content.startswith("{") else "bad.yaml"
    (work / name).write_text(content)
    proc = cli("run", name, cwd=work, check_rc=1)
    assert expected in proc.stderr and name in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (work / "output").exists()


def test_missing_and_unreadable_files(work):
    proc = cli("run", "nowhere.yaml", cwd=work, check_rc=1)
    assert proc.stderr.strip() == "nowhere.yaml: file not found"
    proc = cli("validate", ".", cwd=work, check_rc=1)
    assert "is a directory" in proc.stderr


def test_validate_ok_and_usage_errors(work):
    proc = cli("validate", "small.yaml", cwd=work)
    assert proc.stdout.strip() == "small.yaml: ok: 3 nodes to run for 1 output (save)"
    proc = cli("run", cwd=work, check_rc=2)
    assert "usage:" in proc.stderr
    proc = cli("run", "small.yaml", "--device", "tpu", cwd=work, check_rc=1)
    assert "unknown device 'tpu'" in proc.stderr and "Traceback" not in proc.stderr


def test_convert_round_trip(work):
    proc = cli("convert", "small.yaml", "--to", "api", cwd=work)
    api = json.loads(proc.stdout)
    assert api["save"] == {"inputs": {"images": ["inv", 0], "filename_prefix": "small"}, "class_type": "SaveImage",
                           "_meta": {"title": "Save Image"}}
    (work / "small.json").write_text(proc.stdout)
    proc = cli("convert", "small.json", "--to", "yaml", "-o", "back.yaml", cwd=work)
    back = (work / "back.yaml").read_text()
    proc = cli("convert", "back.yaml", "--to", "api", cwd=work)
    assert json.loads(proc.stdout) == api
    assert "images: inv" in back


def test_nodes_json_is_the_object_info_document(work):
    proc = cli("nodes", "--json", cwd=work)
    info = json.loads(proc.stdout)
    assert info["SaveImage"]["output_node"] is True and info["EmptyImage"]["output"] == ["IMAGE"]
    proc = cli("nodes", cwd=work)
    assert "EmptyImage(width: INT, height: INT, batch_size: INT, color: INT) -> IMAGE" in proc.stdout


def test_shipped_demo_workflow_runs(tmp_path):
    proc = cli("run", SHAPES, "--output-dir", tmp_path / "out", "--json", cwd=tmp_path)
    run = json.loads(proc.stdout)
    assert len(run["executed"]) == 11
    img = Image.open(tmp_path / "out" / "shapes_00001_.png")
    assert img.size == (512, 512)
    sea = img.getpixel((256, 500))
    assert all(abs(a - b) <= 1 for a, b in zip(sea, (0x26, 0x46, 0x53)))  # the sea, away from edges
    centre = img.getpixel((256, 230))
    assert centre[0] > 200  # the sun
