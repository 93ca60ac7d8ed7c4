from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from latentgraph.graph import Environment, Executor  # noqa: E402
from toy_nodes import make_toy_registry  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def toy():
    """(registry, calls) with the toy nodes."""
    return make_toy_registry()


@pytest.fixture
def env(tmp_path) -> Environment:
    folders = {name: tmp_path / name for name in ("output", "input", "temp", "models")}
    for path in folders.values():
        path.mkdir()
    return Environment(output_dir=folders["output"], input_dir=folders["input"], temp_dir=folders["temp"],
                       models_dir=folders["models"], device="cpu")


@pytest.fixture
def executor(toy, env) -> Executor:
    registry, _ = toy
    return Executor(registry, env)
