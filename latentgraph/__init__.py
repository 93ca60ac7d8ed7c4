"""latentgraph: node-graph pipelines for Stable Diffusion, in the style of ComfyUI.

    from latentgraph import Workflow, Executor, create_registry
    wf = Workflow.load("workflows/shapes.yaml")
    wf.set("sun.color", 0xFFD166)
    result = Executor(create_registry()).run(wf)
"""

from .graph import (Environment, Executor, Link, NodeRegistry, ResultCache, RunResult, ValidationError, Workflow,
                    WorkflowError, node)

__version__ = "0.1.0"
__all__ = ["Environment", "Executor", "Link", "NodeRegistry", "ResultCache", "RunResult", "ValidationError",
           "Workflow", "WorkflowError", "create_registry", "node", "__version__"]


def __getattr__(name: str):
    # create_registry imports the built-in node modules: done on first use, so that
    # `import latentgraph.graph` (or the CLI's --help) does not pay for them
    if name == "create_registry":
        from .nodes import create_registry

        return create_registry
    raise AttributeError(f"module 'latentgraph' has no attribute {name!r}")
