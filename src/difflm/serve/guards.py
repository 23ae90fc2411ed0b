"""What a request must be before the server reads it: addressed to this server (DNS rebinding), a JSON
body (cross-site forms), no larger than the limit however it is sent (chunked or not), and still
wanted (a client gone during the upload is a 499, not a server error).

A web page on another site can make a browser send "simple" requests to a server on the user's
machine: a POST with ``Content-Type: text/plain`` needs no CORS preflight, and a DNS name that
resolves to 127.0.0.1 after the page loaded (DNS rebinding) makes the browser treat the server as
the page's own origin. Refusing bodies that are not JSON (415) stops the first; without an API key,
answering only requests whose ``Host`` is this machine's (`host_allowed`) stops the second.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from .protocol import APIError

MAX_BODY_BYTES = 1 << 20
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def host_allowed(host: str | None, bound_host: str) -> bool:
    """Whether a ``Host`` header names this server: an IP address (a rebound DNS name never looks like
    one), a localhost name, or the name the server was told to listen on. No header (HTTP/1.0) passes."""
    if not host:
        return True
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8000
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in LOCAL_NAMES or name.endswith(".localhost") or name == bound_host.strip("[]").lower()


class HostCheck:
    """ASGI middleware: 421 for a request whose ``Host`` is not this server's (`host_allowed`);
    installed only when no API key protects the server."""

    def __init__(self, app: Any, bound_host: str) -> None:
        self.app, self.bound_host = app, bound_host

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
            if not host_allowed(host, self.bound_host):
                error = APIError(421, f"this server does not answer to the host name {host!r}: without an API key "
                                 "it answers only requests addressed to localhost, an IP address or its --host (a "
                                 "guard against DNS rebinding); connect by one of those, or start it with --api-key",
                                 code="invalid_host")
                return await JSONResponse(error.body(), status_code=421)(scope, receive, send)
        await self.app(scope, receive, send)


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON (``application/json``, with or without a charset):
    a browser sends other types (text/plain, forms) cross-site without asking the server first."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise APIError(415, f"the request body must be JSON sent as Content-Type: application/json, got "
                       f"{media or 'no Content-Type'!r}", code="unsupported_media_type")


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read no further than ``limit`` bytes whatever the transfer encoding (413 past it);
    `APIError` 499 when the client goes away during the upload."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes", code="body_too_large")
    try:
        declared = int(request.headers.get("content-length") or 0)
    except ValueError:
        raise APIError(400, "the Content-Length header is not a number", code="invalid_request") from None
    if declared > limit:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(499, "the client closed the connection before it sent the whole body",
                       code="client_closed_request") from None
    return b"".join(chunks)
