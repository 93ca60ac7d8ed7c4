"""The README's Python examples run as written (in a scratch folder)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    shutil.copytree(ROOT / "workflows", tmp_path / "workflows")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "output" / "shapes_00001_.png").is_file()
    assert namespace["image"].shape == (1, 64, 64, 3)
    assert "Posterize" in namespace["registry"]
