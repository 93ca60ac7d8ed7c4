"""Middleware: ComfyUI's origin check for a server on the loopback, and cache headers."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web

log = logging.getLogger("latentgraph.server")


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_host(value: str) -> tuple[str, str | None]:
    parts = urlsplit("//" + value)
    try:
        port = str(parts.port) if parts.port is not None else None
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port


@web.middleware
async def origin_check(request: web.Request, handler):
    """ComfyUI's guard against cross-site requests to a server on the loopback: when the Host
    is a loopback name and an Origin is sent, they must name the same host (and port)."""
    host, origin = request.headers.get("Host"), request.headers.get("Origin")
    if host and origin:
        host_name, host_port = _split_host(host)
        if _is_loopback(host_name):
            origin_name, origin_port = _split_host(urlsplit(origin).netloc)
            same = origin_name == host_name and (origin_port is None or host_port is None or origin_port == host_port)
            if not same:
                log.warning("refused a request from origin %s to host %s", origin, host)
                return web.Response(status=403, text="Forbidden: the Origin does not match the Host")
    if request.method == "OPTIONS":
        return web.Response(status=200)
    return await handler(request)


@web.middleware
async def cache_headers(request: web.Request, handler):
    response = await handler(request)
    path = request.path.lower()
    if path.endswith((".js", ".css")) or (path.rsplit("/", 1)[-1].startswith("index") and path.endswith(".json")):
        response.headers.setdefault("Cache-Control", "no-cache")
    return response
