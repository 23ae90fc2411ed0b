"""`difflm serve`: an OpenAI-compatible HTTP server for diffusion LMs, with continuous batching,
streamed denoising and a live web page (docs/serving.md).

    from difflm.serve import ServerConfig, create_app
    app = create_app(ServerConfig(model="dlm-adapted"))     # an ASGI app; `difflm serve` runs it

`config` is torch-free; `create_app` needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

from typing import Any

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def create_app(config: ServerConfig, model: Any = None) -> Any:
    """The FastAPI application (see `difflm.serve.app.create_app`)."""
    from .app import create_app as build

    return build(config, model)
