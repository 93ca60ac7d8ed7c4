"""ComfyUI's ``comfy_execution`` package: node expansion and execution blockers (latentgraph's
own, latentgraph/graph/expansion.py)."""
