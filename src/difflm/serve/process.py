"""`difflm serve`'s app under uvicorn, with the shutdown docs/serving.md promises.

uvicorn's own graceful shutdown waits ``timeout_graceful_shutdown`` seconds and then cancels the
handlers: a whole request gets uvicorn's plain-text 500 and a stream is cut mid-response. Here the
server is told first (`Server.drain`): new requests get a 503, and at ``--shutdown-timeout`` the
request batcher ends what is still running with a 503 - a JSON body for a whole request, an error
event and ``[DONE]`` for a stream - so the handlers finish on their own and uvicorn's cancellation
(``CANCEL_GRACE`` seconds later) is only a backstop.
"""

from __future__ import annotations

import socket
from typing import Any

import uvicorn

from .config import ServerConfig

CANCEL_GRACE = 10.0  # seconds after --shutdown-timeout before uvicorn cancels handlers still running


class GracefulServer(uvicorn.Server):
    """A `uvicorn.Server` for an app of `create_app` that drains it when shutdown begins.

    Args:
        app: the FastAPI app (``app.state.server`` is its `Server`).
        config: the `ServerConfig` (``shutdown_timeout``).
        **options: more `uvicorn.Config` settings (``log_level``, ...).
    """

    def __init__(self, app: Any, config: ServerConfig, **options: Any) -> None:
        self.shutdown_timeout = config.shutdown_timeout
        self.app_server = app.state.server
        super().__init__(uvicorn.Config(app, timeout_graceful_shutdown=config.shutdown_timeout + CANCEL_GRACE,
                                        **options))

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.app_server.drain(self.shutdown_timeout)
        await super().shutdown(sockets)
