"""The ComfyUI-compatible server (issue 6): the prompt queue and history so far; the aiohttp
application and its routes come next."""
