"""The ComfyUI-compatible server: ``create_app`` builds the aiohttp application (routes at
their paths and under ``/api``, the websocket, one worker thread over one executor)."""

from .app import SERVER, Server, create_app, wait_until_listening

__all__ = ["SERVER", "Server", "create_app", "wait_until_listening"]
