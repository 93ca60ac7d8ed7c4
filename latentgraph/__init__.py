"""latentgraph: node-graph pipelines for Stable Diffusion, in the style of ComfyUI.

    from latentgraph import Workflow, Executor, create_registry
    wf = Workflow.load("workflows/shapes.yaml")
    wf.set("sun.color", 0xFFD166)
    result = Executor(create_registry()).run(wf)
"""

from .graph import (Environment, Executor, Link, NodeRegistry, ResultCache, RunResult, ValidationError, Workflow,
                    WorkflowError, node)
from .nodes import create_registry

__version__ = "0.1.0"
__all__ = ["Environment", "Executor", "Link", "NodeRegistry", "ResultCache", "RunResult", "ValidationError",
           "Workflow", "WorkflowError", "create_registry", "node", "__version__"]
