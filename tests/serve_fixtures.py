"""A real `difflm serve` application on loopback, in a thread of the test process (the bundled
model loads once per module), for the tests that talk to it with the official `openai` client."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (make install)")
openai = pytest.importorskip("openai", reason="the server tests use the official openai client (test extra)")

import torch  # noqa: E402
import uvicorn  # noqa: E402

from difflm.serve import ServerConfig, create_app  # noqa: E402
from difflm.serve.app import load_model  # noqa: E402

MODEL = "dlm-adapted"


@contextmanager
def running_server(model, **settings) -> Iterator[str]:
    """Serve ``model`` with ``ServerConfig(**settings)`` on a free loopback port; yields the base
    URL (``http://127.0.0.1:PORT``) and stops the server afterwards."""
    config = ServerConfig(model=MODEL, port=0, **settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    server = uvicorn.Server(uvicorn.Config(create_app(config, model), log_level="warning",
                                          timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def dlm():
    torch.set_num_threads(1)  # the test machine's two cores are shared
    return load_model(ServerConfig(model=MODEL))  # the server's own loader (`difflm.formats.load`)


def client(base_url: str, api_key: str = "none", **kwargs) -> "openai.OpenAI":
    """The official client, without retries: a 429 or 408 must reach the test."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)


class Raw:
    """A plain HTTP answer (status, headers with lower-case names, body text), for requests the
    openai client cannot make (bad JSON, no key, preflights)."""

    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status, headers, text

    def json(self):
        import json

        return json.loads(self.text)


def raw(base_url: str, method: str, path: str, body: bytes | dict | None = None,
        headers: dict[str, str] | None = None) -> Raw:
    """One request with the standard library's http.client."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Raw(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode())
    finally:
        connection.close()
