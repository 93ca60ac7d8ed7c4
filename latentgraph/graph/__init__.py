"""The engine, knowing nothing of Stable Diffusion: declarations, registry, workflows,
validation, cache and executor. Front doors build a registry and hand it to an Executor."""

from .cache import ResultCache
from .context import NodeContext
from .declare import NodeDef, Result, node
from .env import Environment, file_identity
from .errors import (DeclarationError, Interrupted, LatentgraphError, NodeExecutionError, Problem,
                     ValidationError, WorkflowError)
from .executor import Executor, RunResult
from .registry import NodeRegistry
from .types import (ANY, CLIP, CONDITIONING, IMAGE, LATENT, MASK, MODEL, VAE, Boolean, Combo, Float, Hidden,
                    InputSpec, Int, Output, Socket, String)
from .validate import Plan, ValidationReport, validate
from .workflow import Link, NodeRef, NodeSpec, Workflow

# Events an Executor sends to listeners, as listener(kind, data); ComfyUI's names and fields.
EVENTS = ("execution_start", "execution_cached", "executing", "progress", "progress_state", "progress_text",
          "executed", "execution_success", "execution_error", "execution_interrupted")

__all__ = [
    "ANY", "CLIP", "CONDITIONING", "EVENTS", "IMAGE", "LATENT", "MASK", "MODEL", "VAE",
    "Boolean", "Combo", "DeclarationError", "Environment", "Executor", "Float", "Hidden", "InputSpec",
    "Int", "Interrupted", "LatentgraphError", "Link", "NodeContext", "NodeDef", "NodeExecutionError",
    "NodeRef", "NodeRegistry", "NodeSpec", "Output", "Plan", "Problem", "Result", "ResultCache",
    "RunResult", "Socket", "String", "ValidationError", "ValidationReport", "Workflow", "WorkflowError",
    "file_identity", "node", "validate",
]
