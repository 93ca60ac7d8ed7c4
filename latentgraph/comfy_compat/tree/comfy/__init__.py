"""ComfyUI's ``comfy`` package as latentgraph's compatibility layer provides it (see
latentgraph/comfy_compat/__init__.py); its submodules are the files beside this one."""
