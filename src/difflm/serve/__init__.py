"""`difflm serve`: an OpenAI-compatible HTTP server for diffusion LMs, with continuous batching,
streamed denoising and a live web page (docs/serving.md).

    from difflm.serve import ServerConfig, create_app
    app = create_app(ServerConfig(model="dlm-adapted"))     # an ASGI app; `difflm serve` runs it

`config` is torch-free; `create_app` needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client).
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]


def __getattr__(name: str) -> Any:
    """``create_app`` on first use (PEP 562, as `difflm` itself does): the app needs the optional ``serve``
    extra (FastAPI) and torch, and `ServerConfig` must stay importable without them - the command line
    validates its flags with it before anything heavy loads."""
    if name == "create_app":
        value = importlib.import_module(".app", __name__).create_app
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
