"""ComfyUI's ``comfy.k_diffusion`` package (its fork of k-diffusion) as latentgraph's
compatibility layer provides it: ``sampling`` holds latentgraph's samplers under k-diffusion's
names and signatures."""
