"""`latentgraph make-checkpoint` for every kind: the file (or folder) is written into folders that
do not exist yet, as a newcomer types `models/<kind>/NAME`, and a target that cannot be written is
an error naming it, never an internal error."""

from __future__ import annotations

import pytest

from latentgraph.cli import main
from latentgraph.make_files import MAKE_KINDS

# the least each kind needs besides OUT
ARGS = {"upscale_model": [], "gligen": ["--family", "sd15"], "style_model": ["--family", "sd15"],
        "hypernetwork": ["--family", "sd15"]}


@pytest.mark.parametrize("kind", sorted(MAKE_KINDS))
def test_every_kind_writes_into_new_folders(kind, tmp_path, capsys):
    out = tmp_path / "models" / "new" / kind / ("folder" if kind == "diffusers" else f"{kind}.safetensors")
    argv = ["make-checkpoint", str(out), "--kind", kind] + ARGS.get(kind, ["--family", "sd15"])
    assert main(argv) == 0
    assert out.exists()
    written = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else [out]
    assert written and all(p.stat().st_size > 0 for p in written)
    assert capsys.readouterr().out.startswith(f"wrote {out}: ")


def test_an_unwritable_target_is_named(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "x4.safetensors"  # its "folder" is a file
    assert main(["make-checkpoint", str(out), "--kind", "upscale_model"]) == 1
    err = capsys.readouterr().err
    assert f"{out}: cannot write: " in err and "internal error" not in err
