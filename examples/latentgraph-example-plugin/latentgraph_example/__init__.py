"""An example latentgraph plugin. latentgraph calls ``register`` with its node registry (the
``latentgraph.nodes`` entry point in pyproject.toml names it)."""

from . import nodes


def register(registry):
    registry.register_module(nodes)
